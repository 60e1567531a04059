/*-------------------------------------------------------------------------
 *
 * saved.h
 *		The layout of saved counters, private to persistence and replication
 *		(persist.c, replica.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_SAVED_H_
#define AI_SAVED_H_

#include "reservations.h"
#include "shmem.h"

/*
 * persist.c: what a save writes, to the files and (replica.c) to the WAL.
 * A base, a delta block and a WAL record are each a header followed by
 * nentries AiSavedEntry, nresv AiSavedResv and ntomb AiKey.
 */
#define AI_SAVE_VERSION			5	/* of this layout */

/* The head of a base, a delta block or a WAL record. */
typedef struct AiSaveHeader
{
	uint32		magic;
	uint32		version;
	uint32		ring;			/* AI_BURST_RING of the writer */
	uint32		nentries;
	uint32		nresv;
	uint32		ntomb;			/* delta: tombstones (keys); base: 0 */
	uint64		base_id;		/* the base this is, or follows */
	TimestampTz written_at;
	uint64		shutdown_lsn;	/* base written at a clean shutdown: its
								 * checkpoint; otherwise 0 */
} AiSaveHeader;

typedef struct AiSavedEntry
{
	AiKey		key;
	int64		burst_head;
	int32		burst_window_ms;
	uint32		burst[AI_BURST_RING];
	int32		day;
	uint32		daily_count;
	int32		tokens_head;
	uint32		tokens[AI_TOKEN_RING];
	uint16		plan_hash;
	uint8		id_len;
	char		id_prefix[AI_ID_PREFIX_LEN];
	/* the month's spend, when it was cached exact with nothing in flight */
	bool		spend_valid;
	int32		spend_month;
	AiMoney		committed_spend;
	uint8		kind;			/* layout 5: AiEntry.kind (a user or a rule's counters) */
	uint8		use_tree;		/* 1.9, in layout 5's padding: AiEntry.use_tree */
} AiSavedEntry;

/* An entry as layout 4 (release 1.5) saved it: no kind, every one a user's. */
typedef struct AiSavedEntryV4
{
	AiKey		key;
	int64		burst_head;
	int32		burst_window_ms;
	uint32		burst[AI_BURST_RING];
	int32		day;
	uint32		daily_count;
	int32		tokens_head;
	uint32		tokens[AI_TOKEN_RING];
	uint16		plan_hash;
	uint8		id_len;
	char		id_prefix[AI_ID_PREFIX_LEN];
	bool		spend_valid;
	int32		spend_month;
	AiMoney		committed_spend;
} AiSavedEntryV4;

/* An entry as layouts 2 and 3 (releases 1.2 to 1.4) saved it: 16 bytes of id. */
typedef struct AiSavedEntryV3
{
	AiKey		key;
	int64		burst_head;
	int32		burst_window_ms;
	uint32		burst[AI_BURST_RING];
	int32		day;
	uint32		daily_count;
	int32		tokens_head;
	uint32		tokens[AI_TOKEN_RING];
	uint16		plan_hash;
	uint8		id_len;
	char		id_prefix[AI_ID_PREFIX_LEN_V3];
} AiSavedEntryV3;

typedef struct AiSavedResv
{
	int64		id;
	AiKey		key;
	AiMoney		amount;
	TimestampTz expires_at;
	/* layout 5: what it holds on the rules of ai_rules */
	int64		tokens;
	int32		rules[AI_RESV_RULES];
	bool		all_rules;
} AiSavedResv;

/* A reservation as layouts 2 to 4 (releases 1.2 to 1.5) saved it. */
typedef struct AiSavedResvV4
{
	int64		id;
	AiKey		key;
	AiMoney		amount;
	TimestampTz expires_at;
} AiSavedResvV4;

/* Bytes that follow a header: its entries, reservations and tombstones. */
static inline uint64
ai_saved_bytes(const AiSaveHeader *hdr)
{
	Size		entry = hdr->version < 4 ? sizeof(AiSavedEntryV3) :
		hdr->version < 5 ? sizeof(AiSavedEntryV4) : sizeof(AiSavedEntry);
	Size		resv = hdr->version < 5 ? sizeof(AiSavedResvV4) : sizeof(AiSavedResv);

	return entry * (uint64) hdr->nentries +
		resv * (uint64) hdr->nresv + sizeof(AiKey) * (uint64) hdr->ntomb;
}

/* saved.c */
typedef enum AiApplyMode
{
	AI_APPLY_LOAD,				/* the save files, at start */
	AI_APPLY_WITH_SPEND,		/* a base written at the last clean shutdown:
								 * its cached spend is exact */
	AI_APPLY_REPLAY				/* a WAL record, under the partition locks */
} AiApplyMode;
extern uint32 ai_apply_saved(const AiSaveHeader *hdr, const char *data, TimestampTz now,
							 AiApplyMode mode);

/* replica.c: a save to the WAL */
extern void ai_wal_log_save(const AiSaveHeader *hdr, const AiSavedEntry *entries,
							const AiSavedResv *resv, const AiKey *tomb);

#endif							/* AI_SAVED_H_ */

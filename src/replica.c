/*-------------------------------------------------------------------------
 *
 * replica.c
 *		The counters on streaming standbys, and what a promotion must redo.
 *
 * A primary's saver logs every periodic save to the WAL as well as to its
 * files: the entries that changed (burst buckets, the day's count, tokens),
 * their open reservations and the tombstones of removed entries, in records
 * of a custom resource manager, "ai_ratelimit" (id AI_RMGR_ID).  Each record
 * states whole entries, not increments, so replaying a record twice, or an
 * older one before a newer one, ends in the newer state.  The startup process
 * of every standby (and of a primary recovering from a crash) applies them
 * to its own table under the partition locks, so a standby holds the
 * primary's counters as of its last save, and a standby made by
 * pg_basebackup starts from the copied files plus every record since the
 * backup began.
 *
 * A standby never counts: every function that consumes or resets refuses
 * in recovery (ai_require_primary).  When a standby is promoted, caches it
 * may hold from before are dropped once, by the first call that finds
 * recovery over: per-session plans, prices and users, and the month's
 * spend cached in the shared entries (replayed ai_usage rows fire no
 * trigger), which is then read again from the tables.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

#include "ai_replica.h"
#include "ai_resvid.h"
#include "ai_saved.h"
#include "ai_shmem.h"

/*
 * Entries per record: 4096 entries of 208 bytes are 832 kB; the record
 * also carries their reservations (72 bytes each), and the first one the
 * tombstones (16 bytes each).
 */
#define AI_WAL_CHUNK			4096
StaticAssertDecl(sizeof(AiSavedEntry) == 208, "AI_WAL_CHUNK's comment counts 208 bytes an entry");
StaticAssertDecl(sizeof(AiSavedResv) == 72, "AI_WAL_CHUNK's comment counts 72 bytes a reservation");

static void ai_rmgr_redo(XLogReaderState *record);
static void ai_rmgr_desc(StringInfo buf, XLogReaderState *record);
static const char *ai_rmgr_identify(uint8 info);

static RmgrData ai_rmgr = {
	.rm_name = "ai_ratelimit",
	.rm_redo = ai_rmgr_redo,
	.rm_desc = ai_rmgr_desc,
	.rm_identify = ai_rmgr_identify
};

/* From _PG_init, while shared_preload_libraries are loaded. */
void
ai_register_rmgr(void)
{
	RegisterCustomRmgr(AI_RMGR_ID, &ai_rmgr);
}

/*
 * Log one record: entries [0, nentries), their reservations, tombstones.
 * Returns where the record ends.
 */
static XLogRecPtr
ai_wal_log_chunk(const AiSaveHeader *save, const AiSavedEntry *entries, uint32 nentries,
				 const AiSavedResv *resv, uint32 nresv, const AiKey *tomb, uint32 ntomb)
{
	AiSaveHeader hdr = *save;

	hdr.nentries = nentries;
	hdr.nresv = nresv;
	hdr.ntomb = ntomb;
	XLogBeginInsert();
	XLogRegisterData((char *) &hdr, sizeof(hdr));
	if (nentries > 0)
		XLogRegisterData((char *) entries, sizeof(AiSavedEntry) * nentries);
	if (nresv > 0)
		XLogRegisterData((char *) resv, sizeof(AiSavedResv) * nresv);
	if (ntomb > 0)
		XLogRegisterData((char *) tomb, sizeof(AiKey) * ntomb);
	return XLogInsert(AI_RMGR_ID, XLOG_AI_SAVE);
}

/*
 * Log what a save copied (hdr counts the arrays), AI_WAL_CHUNK entries to a
 * record, each with its reservations (they follow their entry in the
 * save's order), the tombstones in the first, and wait until it is flushed
 * so that the walsenders send it now.  Never in recovery.
 */
void
ai_wal_log_save(const AiSaveHeader *hdr, const AiSavedEntry *entries,
				const AiSavedResv *resv, const AiKey *tomb)
{
	uint32		e = 0;
	uint32		r = 0;
	uint32		ntomb = hdr->ntomb;
	XLogRecPtr	end = InvalidXLogRecPtr;

	while (e < hdr->nentries || ntomb > 0)
	{
		uint32		ne = Min(hdr->nentries - e, AI_WAL_CHUNK);
		uint32		r0 = r;

		for (uint32 i = e; i < e + ne; i++)
			while (r < hdr->nresv && memcmp(&resv[r].key, &entries[i].key, sizeof(AiKey)) == 0)
				r++;
		end = ai_wal_log_chunk(hdr, entries + e, ne, resv + r0, r - r0, tomb, ntomb);
		e += ne;
		ntomb = 0;
	}

	/*
	 * Flushed to the end of the last record, not to the insert position: at
	 * a page boundary that points past the page header, beyond any WAL
	 * written, and the flush fails.
	 */
	if (!XLogRecPtrIsInvalid(end))
		XLogFlush(end);
}

static void
ai_rmgr_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	AiSaveHeader hdr;

	if (info == XLOG_AI_IDS)
	{
		ai_ids_redo(XLogRecGetData(record), XLogRecGetDataLen(record));
		return;
	}
	if (info != XLOG_AI_SAVE)
	{
		/* a later version's record: skip it, as one of another layout */
		ereport(WARNING,
				(errmsg("ai_ratelimit skipped a WAL record of unknown kind %u", info),
				 errhint("Run the same ai_ratelimit version on the primary and its standbys.")));
		return;
	}
	memset(&hdr, 0, sizeof(hdr));
	if (XLogRecGetDataLen(record) >= sizeof(hdr))
		memcpy(&hdr, XLogRecGetData(record), sizeof(hdr));
	/* a layout this library does not know: the version or the sizes differ */
	if (XLogRecGetDataLen(record) != sizeof(hdr) + ai_saved_bytes(&hdr) ||
		hdr.ring != AI_BURST_RING || hdr.version < 3 || hdr.version > AI_SAVE_VERSION)
	{
		ereport(WARNING,
				(errmsg("ai_ratelimit skipped counters logged by another version of the extension"),
				 errhint("Run the same ai_ratelimit version on the primary and its standbys.")));
		return;
	}
	(void) ai_apply_saved(&hdr, XLogRecGetData(record) + sizeof(hdr),
						  GetCurrentTimestamp(), AI_APPLY_REPLAY);
}

static void
ai_rmgr_desc(StringInfo buf, XLogReaderState *record)
{
	AiSaveHeader hdr;

	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) == XLOG_AI_IDS &&
		XLogRecGetDataLen(record) == sizeof(int64))
	{
		int64		ceiling;

		memcpy(&ceiling, XLogRecGetData(record), sizeof(ceiling));
		appendStringInfo(buf, "reservation ids below ms " INT64_FORMAT, ceiling);
		return;
	}
	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) != XLOG_AI_SAVE ||
		XLogRecGetDataLen(record) < sizeof(hdr))
		return;
	memcpy(&hdr, XLogRecGetData(record), sizeof(hdr));
	appendStringInfo(buf, "users %u, reservations %u, removed %u, saved at %s",
					 hdr.nentries, hdr.nresv, hdr.ntomb, timestamptz_to_str(hdr.written_at));
}

static const char *
ai_rmgr_identify(uint8 info)
{
	switch (info & ~XLR_INFO_MASK)
	{
		case XLOG_AI_SAVE:
			return "SAVE";
		case XLOG_AI_IDS:
			return "IDS";
		default:
			return NULL;
	}
}

/*
 * Once per server start, by the first call that finds recovery over:
 * every cache that replay may have left stale is dropped.  The flag is set
 * only after the generations moved, so a session that sees it set never
 * uses a cache from before.  Cached spend is not among them: no session
 * loads it during recovery (every caller of ai_ensure_spend runs on a
 * primary only), replay never sets it, and the only spend in shared memory
 * when recovery ends is what a primary's clean shutdown saved, restored
 * only by a start that replays no WAL (persist.c), so exact.
 */
static void
ai_after_recovery(void)
{
	if (pg_atomic_read_u32(&ai_shared->caches_fresh) != 0)
		return;
	LWLockAcquire(ai_shared->users_lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u32(&ai_shared->caches_fresh) == 0)
	{
		pg_atomic_fetch_add_u32(&ai_shared->plans_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->prices_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->rules_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->accounts_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->users_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->limits_gen, 1);
		pg_atomic_fetch_add_u32(&ai_shared->ext_gen, 1);
		pg_write_barrier();
		pg_atomic_write_u32(&ai_shared->caches_fresh, 1);
	}
	LWLockRelease(ai_shared->users_lock);
}

/* Has this session seen its server out of recovery (ai_require_primary)? */
bool		ai_on_primary = false;

/*
 * The first check of ai_require_primary() in a session, and every check on
 * a standby: a standby's counters are a copy, up to one save interval old,
 * and what it took would be lost anyway.
 */
void
ai_require_primary_slow(const char *func)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("%s must run on the primary: this server is a standby", func),
				 errdetail("A standby's ai_ratelimit counters are a copy of the primary's, as of its last save; checks run on the primary, where they count."),
				 errhint("Connect to the primary for checks and records (for example with target_session_attrs=read-write).")));
	ai_after_recovery();
	ai_on_primary = true;
}

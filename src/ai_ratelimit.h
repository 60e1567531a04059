/*-------------------------------------------------------------------------
 *
 * ai_ratelimit.h
 *		Shared declarations of the ai_ratelimit extension.
 *
 * The extension is split by concern:
 *   ai_ratelimit.c  module load, GUCs, shared-memory hooks
 *   shmem.c         the shared hash of per-user counters and the
 *                   reservation pool, with the locking rules of both
 *   resvid.c        reservation ids: made so that no server of a cluster
 *                   ever issues one twice; their durable ceiling
 *   persist.c       saving the counters to disk and loading them at start;
 *                   the background worker that saves
 *   replica.c       the counters in the WAL, for standbys; what runs where
 *   stats.c         counts of allowed and refused requests per plan
 *   calendar.c      the calendar day and month in ai_ratelimit.timezone
 *   rings.c         sliding windows cut into buckets: burst, tokens per
 *                   minute
 *   money.c         exact fixed-point money (1e-9 cent units) <-> numeric
 *   config.c        backend-local caches of ai_plans and ai_model_prices,
 *                   invalidated through shared generations; the config
 *                   trigger
 *   users.c         per-user configuration (ai_user_plans, ai_user_limits),
 *                   looked up and invalidated one user at a time
 *   xact.c          what a transaction consumed, given back on abort
 *   limits.c        the decision, layer by layer: block, burst, daily,
 *                   tokens per minute, monthly budget
 *   spend.c         a user's monthly spend: from the tables, cached exact
 *   usage.c         ai_record_usage: cost, usage row, shared counters
 *   sql_api.c       the SQL-callable functions
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_RATELIMIT_H
#define AI_RATELIMIT_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "common/int128.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "pgtime.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/date.h"
#include "utils/hsearch.h"

/* ---- limits on input ---- */
#define AI_MAX_USER_ID_LEN		256		/* bytes */
#define AI_MAX_MODEL_LEN		256		/* bytes */
#define AI_MAX_TOKENS			INT64CONST(1000000000)	/* per count, per call */

/*
 * Burst window: the window is cut into AI_BURST_SPAN buckets of equal width
 * g = ceil(W / SPAN).  A window ending now overlaps at most SPAN + 2 buckets
 * (floor(t/g) - floor((t - W)/g) <= SPAN + 1), so a ring of SPAN + 2 keeps
 * every bucket that can still count.
 */
#define AI_BURST_SPAN			20
#define AI_BURST_RING			22

/*
 * Tokens per minute: the minute is cut into 3 buckets of 20 s, counted the
 * same conservative way as the burst window (a window ending now overlaps at
 * most 4 of them).
 */
#define AI_TOKEN_BUCKET_SECS	20
#define AI_TOKEN_SPAN			3
#define AI_TOKEN_RING			4

/* Money: int64 counts of 1e-9 cent (prices have at most 5 decimals). */
#define AI_MONEY_SCALE			9
#define AI_MONEY_UNITS_PER_CENT	INT64CONST(1000000000)
typedef int64 AiMoney;
#define AI_MONEY_MAX			PG_INT64_MAX

/* ---- shared state (shmem.c) ---- */

/* The counters are split into this many partitions, each with its lock. */
#define AI_NUM_PARTITIONS		128

/*
 * Hash key: database and a 96-bit hash of the user id.  Two different ids
 * share counters only if all 96 bits collide (about 1e-17 for a million
 * users in one database).
 */
typedef struct AiKey
{
	Oid			dbid;
	uint32		h32;
	uint64		h64;
} AiKey;

typedef enum AiSpendState
{
	AI_SPEND_UNKNOWN = 0,		/* not loaded from ai_usage for this month */
	AI_SPEND_VALID				/* committed_spend is exact for spend_month */
} AiSpendState;

/*
 * Bytes of a user id kept in shared memory for the views: a UUID (36) and
 * most e-mail addresses fit whole; a longer id shows its first bytes.
 */
#define AI_ID_PREFIX_LEN		40

/* What a consuming check does when the hash is full (ai_ratelimit.on_full). */
typedef enum AiOnFull
{
	AI_ON_FULL_REFUSE = 0,
	AI_ON_FULL_ALLOW
} AiOnFull;

/*
 * Per-user counters.  Every field is protected by the partition lock of the
 * entry's key (see shmem.c).
 */
typedef struct AiEntry
{
	AiKey		key;			/* hash key: must be first */

	/* what every check reads and writes comes first: the first 128 bytes */
	int64		burst_head;		/* bucket index of the newest bucket */
	int32		burst_window_ms;	/* window the buckets were cut for */
	int32		day;			/* local day number of daily_count */
	uint32		daily_count;
	uint16		plan_hash;		/* 16 bits of the last plan's name, for views */
	uint8		spend_state;	/* AiSpendState */
	uint8		id_len;			/* length of the user id, at most 255 */
	uint32		burst[AI_BURST_RING];	/* allowed requests per bucket */

	/* monthly spend cache and reservations */
	int32		spend_month;	/* local month number of the spend fields */
	uint32		spend_gen;		/* usage generation the cache was loaded at */
	uint32		change_seq;		/* bumped by every record and settle */
	uint32		inflight;		/* ai_record_usage calls not yet ended */
	AiMoney		committed_spend;	/* committed cost this month */
	INT128		inflight_cost;	/* cost recorded by open transactions, exact
								 * (ai_inflight_cost() reads it) */
	AiMoney		recorded_total; /* every cost ever recorded (wraps) */
	AiMoney		reserved;		/* open reservations, expired or not; when it
								 * saturated, counted again as they leave */
	int32		resv_head;		/* oldest reservation slot, or -1 */
	int32		resv_tail;		/* newest reservation slot, or -1 */
	uint32		alerts_sent;	/* budget alert thresholds notified in spend_month */

	/* tokens per minute: AI_TOKEN_RING buckets of AI_TOKEN_BUCKET_SECS */
	int32		tokens_head;	/* bucket index of the newest token bucket */
	uint32		tokens[AI_TOKEN_RING];

	char		id_prefix[AI_ID_PREFIX_LEN];	/* user id, for views */
	int32		next;			/* next entry in its bucket, or in the free list */
	int32		dirty_next;		/* next in its partition's dirty list; -2: not in it */
	uint8		save_flags;		/* AI_SAVE_* (persist.c) */
	uint8		resv_restored;	/* reservations restored after a crash, not yet
								 * checked against ai_usage (spend.c) */
} AiEntry;

#define AI_SAVE_DIRTY			0x1 /* changed since it was last saved */
#define AI_SAVE_IN_FILE			0x2 /* in the save files: removing it needs a tombstone */

/* What records in flight hold, at most AI_MONEY_MAX.  Caller holds the lock. */
static inline AiMoney
ai_inflight_cost(const AiEntry *e)
{
	if (int128_compare(e->inflight_cost, int64_to_int128(AI_MONEY_MAX)) >= 0)
		return AI_MONEY_MAX;
	if (int128_compare(e->inflight_cost, int64_to_int128(0)) <= 0)
		return 0;
	return int128_to_int64(e->inflight_cost);
}

/* Is the entry's cached spend exact for this month?  Caller holds its lock. */
static inline bool
ai_spend_is_cached(const AiEntry *e, int32 month)
{
	return e->spend_state == AI_SPEND_VALID && e->spend_month == month;
}

typedef enum AiResvState
{
	AI_RESV_FREE = 0,
	AI_RESV_OPEN,				/* counted in its entry's reserved */
	AI_RESV_SETTLING			/* settled by an open transaction */
} AiResvState;

/* A budget reservation, in a fixed pool of slots. */
typedef struct AiReservation
{
	int64		id;				/* see resvid.c; 0 when free */
	AiKey		key;			/* owner */
	AiMoney		amount;
	TimestampTz expires_at;
	int32		next;			/* next slot of the same user, or free list */
	int32		prev;
	uint8		state;			/* AiResvState */
} AiReservation;

/* Most reservation slots a server may have (ai_ratelimit.max_reservations). */
#define AI_RESV_MAX_SLOTS		((1 << 24) - 1)

/* Users whose configuration changed, remembered for the caches (users.c). */
#define AI_USERS_RING			4096

typedef struct AiShared
{
	LWLock	   *resv_lock;		/* guards the reservation pool */
	pg_atomic_uint32 plans_gen;	/* bumped when ai_plans changes */
	pg_atomic_uint32 users_gen;	/* bumped to forget every cached user */
	pg_atomic_uint32 limits_gen;	/* bumped when ai_user_limits changes */
	pg_atomic_uint64 users_seq;	/* users ever put in users_ring */
	LWLock	   *users_lock;		/* guards writing users_ring */
	AiKey		users_ring[AI_USERS_RING];
	pg_atomic_uint32 prices_gen;	/* bumped when ai_model_prices changes */
	pg_atomic_uint32 usage_gen; /* bumped when ai_usage rows are deleted */
	pg_atomic_uint32 ext_gen;	/* bumped when the extension is dropped somewhere */
	pg_atomic_uint32 caches_fresh;	/* generations bumped since recovery ended (replica.c) */
	pg_atomic_uint32 dirty;		/* counters changed since the last save */
	pg_atomic_uint64 last_save;	/* TimestampTz of the last good save, 0: none */
	pg_atomic_uint64 last_wal;	/* TimestampTz counters last went to the WAL */
	pg_atomic_uint32 saver_pid;	/* the saver's process, 0: not running */
	pg_atomic_uint64 saver_started;	/* TimestampTz the saver last started */
	pg_atomic_uint32 saver_starts;	/* times it started since the server did */
	pg_atomic_uint64 save_failures;	/* saves that failed since start */
	pg_atomic_uint64 evictions;
	pg_atomic_uint64 full_refusals;
	TimestampTz stats_reset;	/* guarded by stats_lock */
	LWLock	   *stats_lock;		/* guards adding plans to ai_stats */
	int32		nstats;
	/* reservation ids (resvid.c) */
	LWLock	   *ids_lock;		/* serialises raising the ceiling */
	pg_atomic_uint64 ids_ceiling;	/* no id of this or a later ms is issued
									 * until the file says so (ms) */
	pg_atomic_uint64 ids_saved_at;	/* TimestampTz the ceiling was last saved */
	/* reservation pool and the last id, protected by resv_lock */
	int64		ids_last_ms;	/* ms part of the last id issued, or a floor */
	uint32		ids_last_seq;
	uint32		ids_last_tli;	/* 0: none issued at ids_last_ms (a floor) */
	int32		resv_free;		/* head of the free list */
	int32		resv_used;
	AiReservation resv[FLEXIBLE_ARRAY_MEMBER];
} AiShared;

/*
 * The table of entries: AiEntry slots in one array, chained per bucket.
 * Bucket b holds keys whose hash is b modulo nbuckets, and nbuckets is a
 * multiple of AI_NUM_PARTITIONS, so every entry of bucket b belongs to
 * partition b % AI_NUM_PARTITIONS: a partition's entries can be visited
 * under its lock alone (AiPartIter).
 */
#define AI_TOMB_MAX				65536

typedef struct AiTable
{
	int32		nbuckets;		/* a power of 2, at least AI_NUM_PARTITIONS */
	slock_t		free_mutex;		/* guards free_head */
	int32		free_head;		/* unused slots, linked by next */
	pg_atomic_uint32 nentries;	/* slots in use */
	pg_atomic_uint32 sweep_hand;	/* partition the next sweep starts at */
	/* per partition, under its lock: */
	int32		part_count[AI_NUM_PARTITIONS];
	TimestampTz part_idle_until[AI_NUM_PARTITIONS]; /* swept in vain: not again before */
	int32		part_idle_day[AI_NUM_PARTITIONS];	/* ... if still this local day */
	int32		dirty_head[AI_NUM_PARTITIONS];	/* entries changed since the last save */
	/* keys of saved entries removed since the last save (persist.c) */
	slock_t		tomb_mutex;
	int32		ntomb;
	bool		tomb_overflow;	/* more than AI_TOMB_MAX: the next save is whole */
	AiKey		tomb[AI_TOMB_MAX];
	int32		buckets[FLEXIBLE_ARRAY_MEMBER]; /* chain heads (slot or -1) */
} AiTable;

/* Visits the entries of one partition; the current one may be removed. */
typedef struct AiPartIter
{
	int32		bucket;
	int32		next;
} AiPartIter;

typedef struct AiStats AiStats;

/* Outcomes counted per plan (stats.c). */
typedef enum AiOutcome
{
	AI_OUT_ALLOWED = 0,
	AI_OUT_BURST,
	AI_OUT_DAILY,
	AI_OUT_BUDGET,
	AI_OUT_TOKENS,
	AI_OUT_BLOCKED,
	AI_OUT_COUNT
} AiOutcome;

struct AiStats
{
	Oid			dbid;
	char		plan[NAMEDATALEN * 2];	/* "" for the overflow slot */
	pg_atomic_uint64 count[AI_OUT_COUNT];
};

#define AI_MAX_STATS			512
#define AI_STATS_OVERFLOW		0	/* the slot of plans that did not fit */

extern AiShared *ai_shared;
extern AiStats *ai_stats;
extern AiTable *ai_table;
extern AiEntry *ai_entries;

/* GUCs */
extern int	ai_max_keys;
extern int	ai_max_reservations;
extern int	ai_reservation_ttl;	/* seconds */
extern int	ai_save_interval;	/* milliseconds */
extern char *ai_timezone_name;
extern pg_tz *ai_timezone;
extern int	ai_on_full;			/* AiOnFull */
extern int	ai_user_cache_size; /* users, per backend */
extern int	ai_unknown_model;	/* AiUnknownModel */

/* What ai_record_usage does with a model that has no price (ai_ratelimit.unknown_model). */
typedef enum AiUnknownModel
{
	AI_UNKNOWN_MODEL_WARN = 0,	/* price it by the '*' row, with a WARNING */
	AI_UNKNOWN_MODEL_REFUSE		/* an ERROR: nothing is recorded */
} AiUnknownModel;

/*
 * A user as a call that counts for it sees it: its id, the hash key of the
 * id in this database, the key's hash value and partition lock.  Built once
 * per call (ai_user_init) and passed down, so the id is hashed once.
 */
typedef struct AiUser
{
	const char *id;				/* NUL-terminated */
	int			len;
	AiKey		key;
	uint32		hashcode;		/* ai_key_hash(&key) */
	LWLock	   *lock;			/* the key's partition lock */
} AiUser;

/* shmem.c */
extern void ai_user_init(AiUser *u, const char *id, int len);
extern void ai_shmem_request(void);
extern void ai_shmem_startup(void);
extern void ai_require_loaded(void);
extern void ai_make_key(AiKey *key, const char *id, int len);
extern LWLock *ai_partition_lock(uint32 hashcode);
extern LWLock *ai_partition_lock_at(int partition);
extern void ai_part_iter_init(AiPartIter *it, int partition);
extern AiEntry *ai_part_iter_next(AiPartIter *it);
extern uint32 ai_entry_count(void);
extern void ai_sweep_background(TimestampTz now);
extern void ai_partition_changed(uint32 hashcode);
extern int32 ai_resv_open_count(TimestampTz now);
extern uint32 ai_key_hash(const AiKey *key);
extern AiEntry *ai_entry_lookup(const AiKey *key, uint32 hashcode, bool create,
								TimestampTz now, const char *id, int idlen);
extern AiEntry *ai_entry_get(const AiKey *key, uint32 hashcode, LWLock *lock,
							 TimestampTz now, const char *id, int idlen);
extern bool ai_entry_is_live(AiEntry *e, TimestampTz now, int32 today);
extern void ai_lock_all(LWLockMode mode);
extern void ai_verify(List **problems);
extern void ai_forget_database(Oid dbid);
extern void ai_unlock_all(void);
extern int32 ai_resv_find(const AiEntry *entry, int64 id);
extern int64 ai_resv_create(AiEntry *entry, AiMoney amount, TimestampTz now,
							TimestampTz expires_at, int32 *slot);
extern bool ai_resv_restore(AiEntry *entry, int64 id, AiMoney amount, TimestampTz expires_at);
extern void ai_entry_forget(AiEntry *e);
extern void ai_resv_free(AiEntry *entry, int32 slot);
extern void ai_resv_unreserve(AiEntry *entry, AiMoney amount);
extern AiMoney ai_resv_held(const AiEntry *entry, TimestampTz after, int32 *count);

/* What ai_resv_release found. */
typedef enum AiReleaseResult
{
	AI_RELEASE_DONE,			/* it was open: its estimate is given back */
	AI_RELEASE_EXPIRED,			/* it had expired (held nothing): freed */
	AI_RELEASE_SETTLING,		/* a record in an open transaction settles it */
	AI_RELEASE_NOT_FOUND		/* released, settled, expired and swept, or never ours */
} AiReleaseResult;
extern AiReleaseResult ai_resv_release(int64 id, TimestampTz now);
extern AiMoney ai_resv_open_amount(AiEntry *entry, TimestampTz now);

/* Note that something to save changed, for the saver (persist.c). */
static inline void
ai_mark_dirty(void)
{
	if (pg_atomic_read_u32(&ai_shared->dirty) == 0)
		pg_atomic_write_u32(&ai_shared->dirty, 1);
}

/*
 * Note that an entry's saved state changed: it joins its partition's dirty
 * list.  Caller holds the entry's partition lock exclusively.
 */
static inline void
ai_entry_changed(AiEntry *e)
{
	if (!(e->save_flags & AI_SAVE_DIRTY))
	{
		int32	   *head = &ai_table->dirty_head[ai_key_hash(&e->key) % AI_NUM_PARTITIONS];

		e->save_flags |= AI_SAVE_DIRTY;
		e->dirty_next = *head;
		*head = (int32) (e - ai_entries);
	}
	ai_mark_dirty();
}

/* stats.c */
extern Size ai_stats_size(void);
extern void ai_stats_init(bool found);
extern AiStats *ai_stats_for(const char *plan);
extern void ai_stats_reset(void);
extern const char *ai_outcome_name(AiOutcome o);

/*
 * persist.c: what a save writes, to the files and (replica.c) to the WAL.
 * A base, a delta block and a WAL record are each a header followed by
 * nentries AiSavedEntry, nresv AiSavedResv and ntomb AiKey.
 */
#define AI_SAVE_VERSION			4	/* of this layout */

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
} AiSavedEntry;

/* An entry as layouts 2 and 3 (releases 1.2 to 1.4) saved it: 16 bytes of id. */
#define AI_ID_PREFIX_LEN_V3		16
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
} AiSavedResv;

/* Bytes that follow a header: its entries, reservations and tombstones. */
static inline uint64
ai_saved_bytes(const AiSaveHeader *hdr)
{
	Size		entry = hdr->version < 4 ? sizeof(AiSavedEntryV3) : sizeof(AiSavedEntry);

	return entry * (uint64) hdr->nentries +
		sizeof(AiSavedResv) * (uint64) hdr->nresv + sizeof(AiKey) * (uint64) hdr->ntomb;
}

/* persist.c */
extern uint32 ai_apply_saved(const AiSaveHeader *hdr, const char *data, TimestampTz now,
							 bool replay);
extern void ai_load(void);
extern void ai_save_at_exit(int code, Datum arg);
extern void ai_register_saver(void);

/* replica.c */
extern void ai_register_rmgr(void);
extern void ai_wal_log_save(const AiSaveHeader *hdr, const AiSavedEntry *entries,
							const AiSavedResv *resv, const AiKey *tomb);
extern bool ai_on_primary;
extern void ai_require_primary_slow(const char *func);

/*
 * Every function that counts, consumes or resets calls this first: it
 * fails on a standby (25006).  A session that has seen a primary once never
 * sees a standby again (a primary does not go back into recovery).
 */
static inline void
ai_require_primary(const char *func)
{
	if (likely(ai_on_primary))
		return;
	ai_require_primary_slow(func);
}

/* resvid.c: reservation ids */
#define AI_ID_NEED_CEILING		(-1)	/* ai_id_next: raise the ceiling first */
extern void ai_ids_load(void);
typedef enum AiIdsMode
{
	AI_IDS_CHECK,				/* a check that may issue an id */
	AI_IDS_FORCE,				/* ai_id_next met the ceiling */
	AI_IDS_SAVER				/* the saver, ahead of time */
} AiIdsMode;
extern void ai_ids_ensure(TimestampTz now, AiIdsMode mode);
extern int64 ai_id_next(TimestampTz now);
extern void ai_ids_floor_id(int64 id);
extern void ai_ids_redo(const char *data, uint32 len);
extern void ai_ids_wal_log(int64 ceiling_ms);

/* calendar.c */
typedef struct AiCalendar
{
	int32		day;			/* local day number (days since 2000-01-01) */
	TimestampTz day_end;		/* next local midnight */
	int32		month;			/* local month number (year * 12 + month - 1) */
	TimestampTz month_start;
	TimestampTz month_end;		/* first instant of next month */
	DateADT		month_start_date;
	DateADT		month_end_date;
	DateADT		day_date;
} AiCalendar;

extern void ai_calendar_at(TimestampTz now, AiCalendar *cal);
extern void ai_calendar_for_date(DateADT d, AiCalendar *cal);
extern int32 ai_seconds_until(TimestampTz from, TimestampTz to);

/* rings.c */
extern void ai_burst_advance(AiEntry *e, int32 window_ms, TimestampTz now);
extern void ai_tokens_advance(AiEntry *e, TimestampTz now);
extern uint64 ai_tokens_count(AiEntry *e, TimestampTz now);
extern TimestampTz ai_tokens_retry_at(AiEntry *e, uint64 limit, uint64 need, TimestampTz now);
extern TimestampTz ai_burst_oldest_leaves(AiEntry *e, TimestampTz now);
extern TimestampTz ai_tokens_oldest_leave(AiEntry *e, TimestampTz now);
extern TimestampTz ai_burst_all_leave(AiEntry *e);
extern uint32 ai_burst_count(AiEntry *e, TimestampTz now);
extern TimestampTz ai_burst_retry_at(AiEntry *e, uint32 limit, TimestampTz now);
extern int64 ai_burst_bucket(AiEntry *e, TimestampTz now);

/* money.c */
extern AiMoney ai_money_from_numeric(Datum num, bool round_up, const char *what);
extern Datum ai_money_to_numeric(AiMoney m);
extern AiMoney ai_money_add(AiMoney a, AiMoney b);
extern AiMoney ai_money_percent(AiMoney m, int32 pct);

/* config.c */
#define AI_MAX_ALERTS			8

typedef struct AiPlan
{
	char		name[NAMEDATALEN * 2];
	bool		has_burst;
	bool		has_daily;
	bool		has_budget;
	bool		has_tpm;
	bool		blocked;		/* a per-user block is in force */
	int32		burst_limit;
	int32		burst_window_ms;
	int32		daily_limit;
	int64		tokens_per_minute;
	AiMoney		budget;
	TimestampTz blocked_until;	/* DT_NOEND: until lifted */
	int			nalerts;
	int32		alert_percent[AI_MAX_ALERTS];
	uint16		name_hash;
	AiStats    *stats;			/* shared counters of this plan */
} AiPlan;

typedef struct AiPrice
{
	AiMoney		input;			/* per token, 1e-9 cent units */
	AiMoney		output;
	AiMoney		cached_input;
	AiMoney		cache_write;	/* 5-minute prompt-cache writes */
	AiMoney		cache_write_1h; /* 1-hour prompt-cache writes */
	bool		fallback;		/* priced by the '*' row */
	char		priced_as[AI_MAX_MODEL_LEN + 1];
} AiPrice;

typedef struct AiInternalState
{
	Oid			save_userid;
	int			save_sec;
	int			nestlevel;
} AiInternalState;

/*
 * The limit columns that ai_plans and ai_user_limits share, decoded from a
 * row by ai_decode_limits(); a has_ flag is false where the column is NULL.
 */
typedef struct AiLimitCols
{
	bool		has_burst_limit;
	bool		has_burst_window;
	bool		has_daily;
	bool		has_budget;
	bool		has_tpm;
	int32		burst_limit;
	int32		burst_window_ms;
	int32		daily_limit;
	int64		tokens_per_minute;
	AiMoney		budget;
} AiLimitCols;

/*
 * The limit columns of the table aliased t, in the order ai_decode_limits()
 * reads them; the burst window comes as whole milliseconds, and %s is the
 * tokens-per-minute expression.
 */
#define AI_LIMIT_COLS_OF(t) \
	t ".burst_limit, " \
	"pg_catalog.ceil(pg_catalog.date_part('epoch', " t ".burst_window) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int4, " \
	t ".daily_limit, " t ".monthly_budget_cents, %s"
#define AI_NUM_LIMIT_COLS		5

/* A user's row of ai_user_limits. */
typedef struct AiUserLimits
{
	bool		has_row;
	AiLimitCols lim;
	bool		has_block;
	TimestampTz blocked_until;	/* DT_NOEND: until lifted */
} AiUserLimits;

/* A prepared plan kept for the backend's life (ai_kept_plan). */
typedef struct AiKeptPlan
{
	void	   *plan;			/* SPIPlanPtr */
	char	   *sql;			/* the text it was prepared from */
} AiKeptPlan;

extern void *ai_kept_plan(AiKeptPlan *kp, const char *sql, int nargs, Oid *types);
extern void ai_internal_begin(AiInternalState *st);
extern void ai_internal_end(AiInternalState *st);
extern void ai_as_owner_begin(AiInternalState *st);
extern void ai_as_owner_end(AiInternalState *st);
extern const char *ai_ext_schema(void);
extern Oid	ai_ext_owner(void);
extern bool ai_ext_has_user_limits(void);
extern bool ai_ext_has_relation(const char *name);
extern bool ai_ext_has_column(const char *rel, const char *column);
extern void ai_spi_read(const char *sql, int nargs, Oid *types, Datum *values);
extern bool ai_spi_col(HeapTuple tup, TupleDesc td, int col, Datum *d);
extern void ai_decode_limits(HeapTuple tup, TupleDesc td, int first, AiLimitCols *l);
extern void ai_limits_apply(const AiLimitCols *l, AiPlan *plan);
extern const AiPlan *ai_plan_lookup(const char *plan);
extern bool ai_plans_have_alerts(void);
extern const char *ai_plan_name_by_hash(uint16 h);
extern void ai_plans_refresh_in_recovery(void);
extern void ai_price_lookup(const char *model, AiPrice *price, bool recording);
extern void ai_config_init(void);

/* Generations of the caches, as bits for ai_config_bump_at_end(). */
#define AI_GEN_PLANS			0x1		/* ai_plans */
#define AI_GEN_PRICES			0x2		/* ai_model_prices */
#define AI_GEN_USAGE			0x4		/* ai_usage rows deleted: spend reloads */
extern void ai_config_bump_at_end(uint32 bits);
extern void ai_config_xact_end(bool commit);
extern void ai_config_init_hooks(void);

/* users.c */
extern const char *ai_user_plan(const AiUser *u);
extern void ai_apply_user_limits(const AiUser *u, AiPlan *plan);
extern void ai_users_row_changed(HeapTuple tup, TupleDesc td, bool limits);
extern void ai_users_all_changed(bool limits);
extern void ai_users_xact_end(void);

/* xact.c */
typedef enum AiChargeKind
{
	AI_CHARGE_CHECK,			/* burst and/or daily count, maybe a reservation */
	AI_CHARGE_RECORD			/* an ai_record_usage call */
} AiChargeKind;

typedef struct AiCharge
{
	AiChargeKind kind;
	SubTransactionId subxid;
	AiKey		key;
	int64		burst_bucket;	/* -1 when no burst count was taken */
	int32		day;			/* -1 when no daily count was taken */
	int64		resv_id;		/* reservation made (check) or settled (record) */
	int32		resv_slot;		/* its slot, when resv_id > 0 */
	int32		month;			/* record: month of the cost */
	AiMoney		cost;			/* record: cost added to inflight_cost */
	int32		token_bucket;	/* record: bucket charged with tokens, or -1 */
	uint32		tokens;			/* record: tokens charged there */
	uint32		alert_bits;		/* record: alert thresholds it notified */
} AiCharge;

extern void ai_xact_init(void);
extern void ai_charge_reserve(void);
extern void ai_charge_add(const AiCharge *c);

/* limits.c */

/*
 * The numbers of one layer, for a program to act on: its limit, what is
 * used and what requests in flight hold, in what the layer counts.
 */
typedef struct AiFacts
{
	bool		known;			/* false: no numbers (allowed, or a block) */
	bool		money;			/* money units (the budget), else requests or tokens */
	int64		limit;
	int64		used;
	int64		held;			/* the budget's open reservations; 0 elsewhere */
} AiFacts;

typedef struct AiDecision
{
	bool		allowed;
	const char *limited_by;		/* NULL, or the refusing layer's name */
	AiOutcome	outcome;
	char	   *error;
	int32		retry_after;	/* seconds, when denied; -1: a retry cannot succeed */
	bool		retryable;		/* denied: can a retry succeed, in this window or later */
	AiFacts		facts;			/* denied: the refusing layer's numbers */
	bool		has_remaining;
	int32		remaining;
	TimestampTz reset_at;
	bool		has_reset_at;
	int64		reservation_id;	/* 0: none */
} AiDecision;

extern void ai_decide(const AiUser *u, const AiPlan *plan,
					  Datum estimate, bool has_estimate, int64 est_tokens,
					  bool consume, AiDecision *d);
extern void ai_reset_user(const AiUser *u);

/* One layer of a user's limits now, for rate-limit headers (ai_limit_state). */
typedef struct AiLayerState
{
	const char *layer;			/* blocked, burst, daily, tokens, monthly_budget */
	AiFacts		facts;			/* none for a block */
	int64		remaining;
	TimestampTz reset_at;		/* 0: nothing counts, nothing to reset */
	int32		window_secs;
} AiLayerState;

#define AI_MAX_LAYERS			5
extern int	ai_layer_states(const AiUser *u, const AiPlan *plan, AiLayerState *out);

/* spend.c */
extern bool ai_ensure_spend(const AiUser *u, const AiCalendar *cal, TimestampTz now,
							bool create, AiMoney *fallback);
extern Datum ai_spend_in_month(const char *user_id, DateADT month);
extern void ai_resv_drop_settled(const AiUser *u);
extern void ai_spend_xact_end(bool commit);

/* usage.c */
extern bool ai_recording_usage(void);
extern void ai_record_xact_end(void);
/* The tokens of one call, as vendors bill them. */
typedef struct AiTokens
{
	int64		input;			/* uncached input */
	int64		output;
	int64		cached;			/* prompt-cache reads */
	int64		cache_write;	/* prompt-cache writes, 5-minute */
	int64		cache_write_1h; /* prompt-cache writes, 1-hour */
} AiTokens;

extern Datum ai_record(const AiUser *u, const char *model,
					   const AiTokens *tokens, int64 resv_id, bool has_resv);

#endif							/* AI_RATELIMIT_H */

/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		The shared table of per-user counters (shmem.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_SHMEM_H_
#define AI_SHMEM_H_

#include "calendar.h"
#include "base.h"
#include "money.h"
#include "settings.h"

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
#define AI_ID_PREFIX_LEN_V3		16	/* kept by save layouts 2 and 3 (saved.h) */


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
	uint8		kind;			/* AI_ENTRY_USER, or a rule's counters (AI_ENTRY_RULE) */
	/* a rule's cached use: whose stamp it follows (sweep.c), -1: unknown */
	uint8		use_tree;		/* the stamp has the account tree's in it */
	int32		use_holder;		/* the holder's slot */
} AiEntry;

/*
 * What an entry counts: a user, one rule of ai_rules for one user
 * (rulestate.c says which fields such an entry uses), or an account.  A
 * rule's entry is keyed from its holder's key, in the same partition: one
 * lock covers a user and its plan, user and member rules, and another an
 * account and the rules on it (accounts.c).  Its kind also names its window.
 */
#define AI_ENTRY_USER			0
#define AI_ENTRY_RULE			0x10	/* | AiWindowKind */
#define AI_ENTRY_ACCOUNT		0x20	/* an account: its records in flight and holds */
#define AI_ENTRY_IS_RULE(e)		(((e)->kind & AI_ENTRY_RULE) != 0)
#define AI_ENTRY_IS_USER(e)		((e)->kind == AI_ENTRY_USER)
#define AI_ENTRY_WINDOW(e)		((AiWindowKind) ((e)->kind & 0x0f))

#define AI_SAVE_DIRTY			0x1 /* changed since it was last saved */
#define AI_SAVE_IN_FILE			0x2 /* in the save files: removing it needs a tombstone */

/* Users whose configuration changed, remembered for the caches (users.c). */
#define AI_USERS_RING			4096

typedef struct AiShared
{
	LWLock	   *resv_lock;		/* guards the reservation pool */
	pg_atomic_uint32 users_gen;	/* bumped to forget every cached user */
	pg_atomic_uint32 limits_gen;	/* bumped when ai_user_limits changes */
	pg_atomic_uint64 users_seq;	/* users ever put in users_ring */
	LWLock	   *users_lock;		/* guards writing users_ring */
	AiKey		users_ring[AI_USERS_RING];
	pg_atomic_uint32 accounts_gen;	/* bumped when ai_accounts or a membership changes */
	pg_atomic_uint64 tz_changed_at;	/* TimestampTz a process last saw
									 * ai_ratelimit.timezone change; 0: never */
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
	pg_atomic_uint64 late_records;	/* records naming a reservation no longer open */
	pg_atomic_uint64 repeated_records;	/* records of a reservation recorded before */
	pg_atomic_uint64 misnamed_records;	/* records naming another account than their check */
	pg_atomic_uint32 restored_entries;	/* entries with resv_restored set (never fewer) */
	TimestampTz stats_reset;	/* guarded by stats_lock */
	LWLock	   *stats_lock;		/* guards adding plans to ai_stats */
	int32		nstats;
	/* reservation ids (resvid.c) */
	LWLock	   *ids_lock;		/* serialises raising the ceiling */
	pg_atomic_uint64 ids_ceiling;	/* no id of this or a later ms is issued
									 * until the file says so (ms) */
	pg_atomic_uint64 ids_saved_at;	/* TimestampTz the ceiling was last saved */
	/* the reservation pool's (reservations.c) and the last id, under resv_lock */
	int64		ids_last_ms;	/* ms part of the last id issued, or a floor */
	uint32		ids_last_seq;
	uint32		ids_last_tli;	/* 0: none issued at ids_last_ms (a floor) */
	int32		resv_free;		/* head of the free list */
	int32		resv_used;
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
	uint32		part_epoch[AI_NUM_PARTITIONS];	/* users removed (rulestate.c) */
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

extern AiShared *ai_shared;
extern AiTable *ai_table;
extern AiEntry *ai_entries;

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
	bool		account;		/* an account's counters (ai_account_init), not a user's */
	int			nchain;			/* a user's call: the accounts it charges, */
	const char *const *chain;	/* nearest first (accounts.c); 0 and NULL: none */
} AiUser;

/* shmem.c */
extern void ai_user_init(AiUser *u, const char *id, int len);
extern void ai_account_init(AiUser *a, const char *id, int len);
extern void ai_shmem_request(void);
extern bool ai_shmem_startup(void);
extern void ai_require_loaded(void);
extern void ai_make_key(AiKey *key, const char *id, int len);
extern LWLock *ai_partition_lock(uint32 hashcode);
extern LWLock *ai_partition_lock_at(int partition);
extern void ai_part_iter_init(AiPartIter *it, int partition);
extern AiEntry *ai_part_iter_next(AiPartIter *it);
extern uint32 ai_entry_count(void);
extern void ai_partition_changed(uint32 hashcode);
extern uint32 ai_key_hash(const AiKey *key);
extern void ai_entry_remove(AiEntry *e, uint32 hashcode);
extern AiEntry *ai_entry_lookup(const AiKey *key, uint32 hashcode, bool create,
								TimestampTz now, const char *id, int idlen);
extern void ai_lock_all(LWLockMode mode);
extern void ai_unlock_all(void);
extern AiMoney ai_inflight_cost(const AiEntry *e);
extern bool ai_spend_is_cached(const AiEntry *e, int32 month);
extern void ai_mark_dirty(void);
extern void ai_entry_changed(AiEntry *e);
extern void ai_entry_set_restored(AiEntry *e, bool restored);

#endif							/* AI_SHMEM_H_ */

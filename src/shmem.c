/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		The shared-memory counters of ai_ratelimit: one hash entry per
 *		(database, user), one per rule of ai_rules that counts for a user
 *		(rulestate.c).  The pool of budget reservations is reservations.c;
 *		an entry's life (what keeps it, the sweeps) is sweep.c.
 *
 * Locking rules
 * -------------
 * The table (AiTable, see shmem.h) is split into AI_NUM_PARTITIONS
 * parts, each with its own LWLock (tranche "ai_ratelimit").  A partition
 * lock guards the bucket chains of that partition (shared to look up,
 * exclusive to insert or remove), its count, and every field of the entries
 * that hash into it.  Because a check reads and then changes counters, it
 * holds its partition lock exclusively, for a few dozen instructions; no
 * I/O, no SPI and no ereport(ERROR) happen while a partition lock is held.
 * The free list of slots is guarded by a spinlock, taken under a partition
 * lock for a few instructions.
 *
 * Two kinds of caller take more than one partition lock at a time, and
 * both take them in ascending partition order and release them in
 * descending order: ai_ratelimit_verify(), a debugging aid that takes them
 * all (shared), and a check that charges accounts (decide.c), which takes
 * the locks of its user and of each account on the chain, each once.
 * LWLocks have no deadlock detector; with one global order no process can
 * wait for a lock held by one that waits for its own.  Nothing that holds a
 * partition lock waits for a lower one, and making room for an entry
 * (ai_entry_get, sweep.c, which releases its lock) is done before the set
 * is taken.
 * A rule's counters of a user are keyed into the user's partition, and an
 * account's into the account's (ai_account_init), so a check's set of
 * locks covers every rule that binds it.
 * The reservation pool's resv_lock is the innermost lock: taken under a
 * partition lock or alone, and no lock is taken while it is held
 * (reservations.c); ids_lock (resvid.c) is taken with no other lock held.
 *
 * None of these locks is a transaction lock: they are held for a bounded,
 * short time and never across a wait for another transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "shmem.h"
#include "stats.h"

#define AI_TRANCHE				"ai_ratelimit"

AiShared   *ai_shared = NULL;
AiTable    *ai_table = NULL;
AiEntry    *ai_entries = NULL;
static LWLockPadded *ai_locks = NULL;


/*
 * ai_ratelimit_verify takes every partition lock and resv_lock at once;
 * PostgreSQL holds at most 200 LWLocks at a time (MAX_SIMUL_LWLOCKS in
 * lwlock.c, not exported), and a caller may hold a few of its own.
 */
#define AI_LWLOCKS_HELD_MAX		200
StaticAssertDecl(AI_NUM_PARTITIONS + 1 <= AI_LWLOCKS_HELD_MAX - 16,
				 "too many partitions to take them all at once");

static int32
ai_table_nbuckets(void)
{
	int32		n = AI_NUM_PARTITIONS;

	while (n < ai_max_keys)
		n *= 2;
	return n;
}

static Size
ai_table_size(void)
{
	return add_size(offsetof(AiTable, buckets),
					mul_size(ai_table_nbuckets(), sizeof(int32)));
}

static Size
ai_shmem_size(void)
{
	Size		size = MAXALIGN(sizeof(AiShared));

	size = add_size(size, MAXALIGN(ai_stats_size()));
	size = add_size(size, MAXALIGN(ai_table_size()));
	return add_size(size, mul_size(ai_max_keys, sizeof(AiEntry)));
}

/* An empty table: every slot on the free list. */
static void
ai_table_init(void)
{
	ai_table->nbuckets = ai_table_nbuckets();
	SpinLockInit(&ai_table->free_mutex);
	SpinLockInit(&ai_table->tomb_mutex);
	ai_table->ntomb = 0;
	ai_table->tomb_overflow = false;
	pg_atomic_init_u32(&ai_table->nentries, 0);
	pg_atomic_init_u32(&ai_table->sweep_hand, 0);
	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		ai_table->part_count[p] = 0;
		ai_table->part_idle_until[p] = 0;
		ai_table->part_idle_day[p] = -1;
		ai_table->dirty_head[p] = -1;
		ai_table->part_epoch[p] = 0;
	}
	for (int32 b = 0; b < ai_table->nbuckets; b++)
		ai_table->buckets[b] = -1;
	for (int32 i = 0; i < ai_max_keys; i++)
		ai_entries[i].next = (i + 1 < ai_max_keys) ? i + 1 : -1;
	ai_table->free_head = ai_max_keys > 0 ? 0 : -1;
}

/* Called from shmem_request_hook. */
void
ai_shmem_request(void)
{
	RequestAddinShmemSpace(ai_shmem_size());
	RequestNamedLWLockTranche(AI_TRANCHE, AI_NUM_PARTITIONS + 4);
}

/*
 * Called from shmem_startup_hook; takes AddinShmemInitLock itself.  True
 * when the shared state was made here, empty (at start, and after a crash).
 */
bool
ai_shmem_startup(void)
{
	bool		found;
	bool		table_found;

	ai_shared = NULL;
	ai_table = NULL;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	ai_shared = ShmemInitStruct("ai_ratelimit", sizeof(AiShared), &found);
	ai_locks = GetNamedLWLockTranche(AI_TRANCHE);
	if (!found)
	{
		ai_shared->resv_lock = &ai_locks[AI_NUM_PARTITIONS].lock;
		ai_shared->stats_lock = &ai_locks[AI_NUM_PARTITIONS + 1].lock;
		ai_shared->users_lock = &ai_locks[AI_NUM_PARTITIONS + 2].lock;
		ai_shared->ids_lock = &ai_locks[AI_NUM_PARTITIONS + 3].lock;
		pg_atomic_init_u64(&ai_shared->ids_ceiling, 0);
		pg_atomic_init_u64(&ai_shared->ids_saved_at, 0);
		ai_shared->ids_last_ms = 0;
		ai_shared->ids_last_seq = 0;
		ai_shared->ids_last_tli = 0;
		pg_atomic_init_u32(&ai_shared->users_gen, 1);
		pg_atomic_init_u32(&ai_shared->limits_gen, 1);
		pg_atomic_init_u64(&ai_shared->users_seq, 0);
		pg_atomic_init_u32(&ai_shared->accounts_gen, 1);
		pg_atomic_init_u64(&ai_shared->tz_changed_at, 0);
		pg_atomic_init_u32(&ai_shared->usage_gen, 1);
		pg_atomic_init_u32(&ai_shared->ext_gen, 1);
		pg_atomic_init_u32(&ai_shared->caches_fresh, 0);
		pg_atomic_init_u32(&ai_shared->dirty, 0);
		pg_atomic_init_u64(&ai_shared->last_save, 0);
		pg_atomic_init_u64(&ai_shared->last_wal, 0);
		pg_atomic_init_u32(&ai_shared->saver_pid, 0);
		pg_atomic_init_u64(&ai_shared->saver_started, 0);
		pg_atomic_init_u32(&ai_shared->saver_starts, 0);
		pg_atomic_init_u64(&ai_shared->save_failures, 0);
		pg_atomic_init_u64(&ai_shared->evictions, 0);
		pg_atomic_init_u64(&ai_shared->full_refusals, 0);
		pg_atomic_init_u64(&ai_shared->late_records, 0);
		pg_atomic_init_u64(&ai_shared->repeated_records, 0);
		pg_atomic_init_u64(&ai_shared->misnamed_records, 0);
		pg_atomic_init_u32(&ai_shared->restored_entries, 0);
	}

	ai_stats_init(found);

	ai_table = ShmemInitStruct("ai_ratelimit table", ai_table_size(), &table_found);
	ai_entries = ShmemInitStruct("ai_ratelimit entries",
								 mul_size(ai_max_keys, sizeof(AiEntry)), &table_found);
	if (!table_found)
		ai_table_init();

	LWLockRelease(AddinShmemInitLock);
	return !found;
}

/* Take every partition lock, in partition order. */
void
ai_lock_all(LWLockMode mode)
{
	for (int i = 0; i < AI_NUM_PARTITIONS; i++)
		LWLockAcquire(&ai_locks[i].lock, mode);
}

void
ai_unlock_all(void)
{
	for (int i = AI_NUM_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&ai_locks[i].lock);
}

/*
 * Every SQL entry point calls this first: without shared_preload_libraries
 * there are no counters, and we say so instead of crashing.
 */
void
ai_require_loaded(void)
{
	if (ai_shared == NULL || ai_table == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("ai_ratelimit must be loaded via shared_preload_libraries"),
				 errhint("Add ai_ratelimit to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* Build the hash key of a user id in the current database. */
void
ai_make_key(AiKey *key, const char *id, int len)
{
	uint64		h = hash_bytes_extended((const unsigned char *) id, len, 0x61695f726cULL);

	memset(key, 0, sizeof(AiKey));	/* keys are compared with memcmp */
	key->dbid = MyDatabaseId;
	key->h64 = h;
	key->h32 = hash_bytes((const unsigned char *) id, len);
}

/* A user of the current database, hashed once for the whole call. */
void
ai_user_init(AiUser *u, const char *id, int len)
{
	u->id = id;
	u->len = len;
	ai_make_key(&u->key, id, len);
	u->hashcode = ai_key_hash(&u->key);
	u->lock = ai_partition_lock(u->hashcode);
	u->account = false;
	u->nchain = 0;
	u->chain = NULL;
}

/*
 * An account of the current database, as the holder of its rules'
 * counters: a key of its own namespace (another seed), so an account and a
 * user of the same name never share counters.
 */
void
ai_account_init(AiUser *a, const char *id, int len)
{
	memset(a, 0, sizeof(*a));
	a->id = id;
	a->len = len;
	a->key.dbid = MyDatabaseId;
	a->key.h64 = hash_bytes_extended((const unsigned char *) id, len, 0x61695f6163ULL);
	a->key.h32 = hash_bytes_uint32(hash_bytes((const unsigned char *) id, len) ^ 0x61636374U);
	a->hashcode = ai_key_hash(&a->key);
	a->lock = ai_partition_lock(a->hashcode);
	a->account = true;
}

/* The hash value of a key: its own 32 hash bits, mixed with the database. */
uint32
ai_key_hash(const AiKey *key)
{
	return key->h32 ^ murmurhash32((uint32) key->dbid);
}

LWLock *
ai_partition_lock(uint32 hashcode)
{
	return &ai_locks[hashcode % AI_NUM_PARTITIONS].lock;
}

LWLock *
ai_partition_lock_at(int partition)
{
	return &ai_locks[partition].lock;
}

uint32
ai_entry_count(void)
{
	return pg_atomic_read_u32(&ai_table->nentries);
}

/* Start visiting the entries of a partition; caller holds its lock. */
void
ai_part_iter_init(AiPartIter *it, int partition)
{
	it->bucket = partition - AI_NUM_PARTITIONS;
	it->next = -1;
}

/*
 * The next entry of the partition, or NULL.  The entry returned may be
 * removed before the next call.
 */
AiEntry *
ai_part_iter_next(AiPartIter *it)
{
	AiEntry    *e;

	while (it->next < 0)
	{
		it->bucket += AI_NUM_PARTITIONS;
		if (it->bucket >= ai_table->nbuckets)
			return NULL;
		it->next = ai_table->buckets[it->bucket];
	}
	e = &ai_entries[it->next];
	it->next = e->next;
	return e;
}

static void
ai_entry_init(AiEntry *e, const char *id, int idlen)
{
	/* key and next already set */
	e->burst_head = 0;
	e->burst_window_ms = 0;
	memset(e->burst, 0, sizeof(e->burst));
	e->day = -1;
	e->daily_count = 0;
	e->spend_month = -1;
	e->spend_gen = 0;
	e->change_seq = 0;
	e->inflight = 0;
	e->spend_state = AI_SPEND_UNKNOWN;
	e->committed_spend = 0;
	e->inflight_cost = int64_to_int128(0);
	e->recorded_total = 0;
	e->reserved = 0;
	e->resv_head = -1;
	e->resv_tail = -1;
	e->alerts_sent = 0;
	e->tokens_head = 0;
	memset(e->tokens, 0, sizeof(e->tokens));
	e->save_flags = 0;
	e->dirty_next = -2;
	e->resv_restored = 0;
	e->kind = AI_ENTRY_USER;
	e->use_tree = 0;
	e->use_holder = -1;
	e->plan_hash = 0;
	e->id_len = (uint8) Min(idlen, 255);
	memcpy(e->id_prefix, id, Min(idlen, AI_ID_PREFIX_LEN));
}

/*
 * Find the entry of a key; with create, make it.  Returns NULL when it does
 * not exist (or cannot be made because every slot is in use).
 *
 * Caller must hold the key's partition lock, exclusively when create.
 */
AiEntry *
ai_entry_lookup(const AiKey *key, uint32 hashcode, bool create,
				TimestampTz now, const char *id, int idlen)
{
	int32	   *head = &ai_table->buckets[hashcode & (ai_table->nbuckets - 1)];
	int32		slot;
	AiEntry    *e;

	for (slot = *head; slot >= 0; slot = ai_entries[slot].next)
	{
		e = &ai_entries[slot];
		if (memcmp(&e->key, key, sizeof(AiKey)) != 0)
			continue;
		/* restored from a layout that kept 16 bytes of the id: complete it */
		if (unlikely(create && e->id_len > AI_ID_PREFIX_LEN_V3 &&
					 e->id_prefix[AI_ID_PREFIX_LEN_V3] == '\0'))
			memcpy(e->id_prefix, id, Min(idlen, AI_ID_PREFIX_LEN));
		return e;
	}
	if (!create)
		return NULL;

	SpinLockAcquire(&ai_table->free_mutex);
	slot = ai_table->free_head;
	if (slot >= 0)
		ai_table->free_head = ai_entries[slot].next;
	SpinLockRelease(&ai_table->free_mutex);
	if (slot < 0)
		return NULL;

	e = &ai_entries[slot];
	e->key = *key;
	e->next = *head;
	*head = slot;
	ai_table->part_count[hashcode % AI_NUM_PARTITIONS]++;
	pg_atomic_fetch_add_u32(&ai_table->nentries, 1);
	ai_entry_init(e, id, idlen);
	return e;
}

/*
 * Unlink an entry from its bucket and put its slot on the free list.
 * Caller must hold the key's partition lock exclusively.
 */
void
ai_entry_remove(AiEntry *e, uint32 hashcode)
{
	int32		slot = (int32) (e - ai_entries);
	int32	   *link = &ai_table->buckets[hashcode & (ai_table->nbuckets - 1)];

	while (*link != slot)
		link = &ai_entries[*link].next;
	*link = e->next;
	ai_table->part_count[hashcode % AI_NUM_PARTITIONS]--;
	pg_atomic_fetch_sub_u32(&ai_table->nentries, 1);
	ai_entry_set_restored(e, false);
	/* the cached spend of its rules no longer follows it (rulestate.c) */
	if (!AI_ENTRY_IS_RULE(e))
		ai_table->part_epoch[hashcode % AI_NUM_PARTITIONS]++;

	/* out of the dirty list too: the slot may serve another user next */
	if (e->save_flags & AI_SAVE_DIRTY)
	{
		link = &ai_table->dirty_head[hashcode % AI_NUM_PARTITIONS];
		while (*link != slot)
			link = &ai_entries[*link].dirty_next;
		*link = e->dirty_next;
		e->dirty_next = -2;
	}

	/* a saved entry must not come back at the next start */
	if (e->save_flags & AI_SAVE_IN_FILE)
	{
		SpinLockAcquire(&ai_table->tomb_mutex);
		if (ai_table->ntomb < AI_TOMB_MAX)
			ai_table->tomb[ai_table->ntomb++] = e->key;
		else
			ai_table->tomb_overflow = true;
		SpinLockRelease(&ai_table->tomb_mutex);
		ai_mark_dirty();
	}

	SpinLockAcquire(&ai_table->free_mutex);
	e->next = ai_table->free_head;
	ai_table->free_head = slot;
	SpinLockRelease(&ai_table->free_mutex);
}

/*
 * Something in a partition may have stopped being live (a reset, a rollback
 * that gave counts back): let the next sweep look at it again.  Caller must
 * hold the partition lock exclusively.
 */
void
ai_partition_changed(uint32 hashcode)
{
	ai_table->part_idle_until[hashcode % AI_NUM_PARTITIONS] = 0;
}

/* ---- an entry's state, for the modules that change it ---- */

/* What records in flight hold, at most AI_MONEY_MAX.  Caller holds the lock. */
AiMoney
ai_inflight_cost(const AiEntry *e)
{
	if (int128_compare(e->inflight_cost, int64_to_int128(AI_MONEY_MAX)) >= 0)
		return AI_MONEY_MAX;
	if (int128_compare(e->inflight_cost, int64_to_int128(0)) <= 0)
		return 0;
	return int128_to_int64(e->inflight_cost);
}

/* Is the entry's cached spend exact for this month?  Caller holds its lock. */
bool
ai_spend_is_cached(const AiEntry *e, int32 month)
{
	return e->spend_state == AI_SPEND_VALID && e->spend_month == month;
}

/* Note that something to save changed, for the saver (persist.c). */
void
ai_mark_dirty(void)
{
	if (pg_atomic_read_u32(&ai_shared->dirty) == 0)
		pg_atomic_write_u32(&ai_shared->dirty, 1);
}

/*
 * Note that an entry's saved state changed: it joins its partition's dirty
 * list.  Caller holds the entry's partition lock exclusively.
 */
void
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

/*
 * Mark an entry's reservations as restored after a crash, or clear the mark
 * (spend.c drops those a record settled).  restored_entries lets a record
 * skip the look when no entry has the mark.  Caller holds the entry's
 * partition lock exclusively (or runs before any session).
 */
void
ai_entry_set_restored(AiEntry *e, bool restored)
{
	if (e->resv_restored == (uint8) restored)
		return;
	e->resv_restored = (uint8) restored;
	if (restored)
		pg_atomic_fetch_add_u32(&ai_shared->restored_entries, 1);
	else
		pg_atomic_fetch_sub_u32(&ai_shared->restored_entries, 1);
}

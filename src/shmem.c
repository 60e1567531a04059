/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		The shared-memory counters of ai_ratelimit: one hash entry per
 *		(database, user), one per rule of ai_rules that counts for a user
 *		(rulestate.c), and a fixed pool of budget reservations.
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
 * all (shared), and a check that charges accounts (limits.c), which takes
 * the locks of its user and of each account on the chain, each once.
 * LWLocks have no deadlock detector; with one global order no process can
 * wait for a lock held by one that waits for its own.  Nothing that holds a
 * partition lock waits for a lower one, and making room for an entry
 * (ai_entry_get, which releases its lock) is done before the set is taken.
 * A rule's counters of a user are keyed into the user's partition, and an
 * account's into the account's (ai_account_init), so a check's set of
 * locks covers every rule that binds it.
 * When the table is full, a new user's check sweeps a few partitions, one
 * at a time, for entries that hold nothing live (ai_make_room); the
 * background worker sweeps too, and frees expired reservations.
 *
 * The reservation pool (ai_resv_* below): a slot in use belongs to one user
 * (or, a shadow, to one account) and is read and changed only under its
 * owner's partition lock.  The free
 * list, the slot counters, the index of ids and the last id issued
 * (resvid.c) are guarded by resv_lock, always taken after a partition lock,
 * never before.  ids_lock (resvid.c) is taken with no other lock held.
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

#include "calendar.h"
#include "resvid.h"
#include "rings.h"
#include "accounts.h"
#include "shmem.h"
#include "stats.h"

#define AI_TRANCHE				"ai_ratelimit"

/* A sweep that freed nothing is not repeated on that partition for at least 1 s. */
#define AI_SWEEP_IDLE_USECS		USECS_PER_SEC
/*
 * A new user meeting a full table sweeps whole partitions until one frees
 * an entry or it has visited this many entries.
 */
#define AI_SWEEP_MAX_ENTRIES	4096
/* The worker sweeps for room while the table is at least this full (%). */
#define AI_SWEEP_FILL_PERCENT	90

AiShared   *ai_shared = NULL;
AiTable    *ai_table = NULL;
AiEntry    *ai_entries = NULL;
static LWLockPadded *ai_locks = NULL;

/*
 * The index of reservation ids: open addressing with linear probing over
 * a power of 2 of at least twice max_reservations cells, each a slot
 * number or -1.  Guarded by resv_lock.
 */
static int32 *ai_resv_index = NULL;
static uint32 ai_resv_index_mask = 0;

/*
 * ai_ratelimit_verify takes every partition lock and resv_lock at once;
 * PostgreSQL holds at most 200 LWLocks at a time (MAX_SIMUL_LWLOCKS in
 * lwlock.c, not exported), and a caller may hold a few of its own.
 */
#define AI_LWLOCKS_HELD_MAX		200
StaticAssertDecl(AI_NUM_PARTITIONS + 1 <= AI_LWLOCKS_HELD_MAX - 16,
				 "too many partitions to take them all at once");

static void ai_entry_remove(AiEntry *e, uint32 hashcode);

static Size
ai_resv_pool_size(void)
{
	return add_size(offsetof(AiShared, resv),
					mul_size(ai_max_reservations, sizeof(AiReservation)));
}

static int32
ai_table_nbuckets(void)
{
	int32		n = AI_NUM_PARTITIONS;

	while (n < ai_max_keys)
		n *= 2;
	return n;
}

static uint32
ai_resv_index_cells(void)
{
	uint32		n = 64;

	while (n < 2 * (uint32) ai_max_reservations)
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
	Size		size = MAXALIGN(ai_resv_pool_size());

	size = add_size(size, MAXALIGN(ai_stats_size()));
	size = add_size(size, MAXALIGN(mul_size(ai_resv_index_cells(), sizeof(int32))));
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
	bool		index_found;

	ai_shared = NULL;
	ai_table = NULL;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	ai_shared = ShmemInitStruct("ai_ratelimit", ai_resv_pool_size(), &found);
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
		ai_shared->resv_used = 0;
		for (int i = 0; i < ai_max_reservations; i++)
		{
			ai_shared->resv[i].id = 0;
			ai_shared->resv[i].state = AI_RESV_FREE;
			/* the free list is linked both ways, so a slot can leave it */
			ai_shared->resv[i].next = (i + 1 < ai_max_reservations) ? i + 1 : -1;
			ai_shared->resv[i].prev = i - 1;
		}
		ai_shared->resv_free = ai_max_reservations > 0 ? 0 : -1;
	}

	ai_stats_init(found);

	ai_resv_index_mask = ai_resv_index_cells() - 1;
	ai_resv_index = ShmemInitStruct("ai_ratelimit reservation index",
									mul_size(ai_resv_index_cells(), sizeof(int32)),
									&index_found);
	if (!index_found)
		for (uint32 i = 0; i <= ai_resv_index_mask; i++)
			ai_resv_index[i] = -1;

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
static void
ai_entry_remove(AiEntry *e, uint32 hashcode)
{
	int32		slot = (int32) (e - ai_entries);
	int32	   *link = &ai_table->buckets[hashcode & (ai_table->nbuckets - 1)];

	while (*link != slot)
		link = &ai_entries[*link].next;
	*link = e->next;
	ai_table->part_count[hashcode % AI_NUM_PARTITIONS]--;
	pg_atomic_fetch_sub_u32(&ai_table->nentries, 1);
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
 * Remove an entry and every reservation it holds.  Caller must hold the
 * key's partition lock exclusively (or be the postmaster, loading).
 */
void
ai_entry_forget(AiEntry *e)
{
	while (e->resv_head >= 0)
		ai_resv_free(e, e->resv_head);
	ai_entry_remove(e, ai_key_hash(&e->key));
}

/*
 * Forget every counter, reservation and cached spend of a database (its
 * DROP EXTENSION committed), one partition at a time.  Caller holds no
 * partition lock.
 */
void
ai_forget_database(Oid dbid)
{
	uint64		removed = 0;

	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		AiPartIter	it;
		AiEntry    *e;

		LWLockAcquire(&ai_locks[p].lock, LW_EXCLUSIVE);
		ai_part_iter_init(&it, p);
		while ((e = ai_part_iter_next(&it)) != NULL)
			if (e->key.dbid == dbid)
			{
				ai_entry_forget(e);
				removed++;
			}
		LWLockRelease(&ai_locks[p].lock);
	}
	if (removed > 0)
		ai_mark_dirty();
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

/*
 * May a rule's count of requests in a calendar window (day holds the
 * window's code, rulestate.c) still be in its window today?  Arithmetic
 * only, as it runs under a partition lock: an hour is kept to the end of
 * its day, which can only keep it longer.
 */
static bool
ai_rule_count_is_current(const AiEntry *e, const AiCalendar *cal)
{
	switch (AI_ENTRY_WINDOW(e))
	{
		case AI_WIN_HOUR:
			return e->day / 24 == cal->day;
		case AI_WIN_DAY:
			return e->day == cal->day;
		case AI_WIN_WEEK:
			return e->day == ai_week_of(cal->day);
		case AI_WIN_MONTH:
			return e->day == cal->month;
		default:
			return false;
	}
}

/*
 * Does an entry hold anything that a later check or record needs: a record
 * in flight, a reservation that is open and not expired or being settled,
 * today's count, a burst place or tokens still in their window?  The one
 * rule for both reclaiming (a dead entry may go) and saving (only live
 * entries are written).  Yesterday's count never counts again, so it does
 * not keep an entry alive.  Caller holds the entry's partition lock.
 */
bool
ai_entry_is_live(AiEntry *e, TimestampTz now, const AiCalendar *cal)
{
	AiResvIter	it;

	if (e->inflight > 0)
		return true;
	ai_resv_iter_init(&it, e, AI_RESV_WALK_LIVE, now);
	if (ai_resv_iter_next(&it, NULL) != NULL)
		return true;
	if (AI_ENTRY_IS_RULE(e) && AI_ENTRY_WINDOW(e) != AI_WIN_MINUTE)
	{
		if (e->daily_count > 0 && ai_rule_count_is_current(e, cal))
			return true;
	}
	else if (e->day == cal->day && e->daily_count > 0)
		return true;
	if (e->burst_window_ms > 0 && ai_burst_count(e, now) > 0)
		return true;
	return ai_tokens_count(e, now) > 0;
}

/*
 * The earliest time at which a live entry could hold nothing live, if
 * nothing else happens to it: the latest of the end of its burst window,
 * its day and its minute of tokens, and its reservations' expiry.  A record
 * in flight or a reservation being settled may end any moment.
 */
static TimestampTz
ai_entry_dies_at(AiEntry *e, TimestampTz now, const AiCalendar *cal)
{
	TimestampTz t = now;
	AiResvIter	it;
	AiReservation *r;

	if (e->inflight > 0)
		return now + AI_SWEEP_IDLE_USECS;
	ai_resv_iter_init(&it, e, AI_RESV_WALK_ALL, now);
	while ((r = ai_resv_iter_next(&it, NULL)) != NULL)
	{
		if (r->state == AI_RESV_SETTLING)
			return now + AI_SWEEP_IDLE_USECS;
		t = Max(t, r->expires_at);
	}
	if (AI_ENTRY_IS_RULE(e) && AI_ENTRY_WINDOW(e) != AI_WIN_MINUTE)
	{
		/* looked at again at midnight: a week or a month may go on */
		if (e->daily_count > 0 && ai_rule_count_is_current(e, cal))
			t = Max(t, cal->day_end);
	}
	else if (e->day == cal->day && e->daily_count > 0)
		t = Max(t, cal->day_end);
	if (e->burst_window_ms > 0)
		t = Max(t, ai_burst_all_leave(e));
	if (ai_tokens_count(e, now) > 0)
		t = Max(t, now + (int64) AI_TOKEN_BUCKET_SECS * AI_TOKEN_RING * USECS_PER_SEC);
	return t;
}

/*
 * Sweep one partition: free the expired reservations of its users (so that
 * an entry held only by them can go) and remove the entries that hold
 * nothing live.  When nothing could be removed, the partition rests until
 * its first entry could die.  Returns how many entries were removed and
 * adds the entries visited to *visited.  Takes the partition lock
 * exclusively; caller must hold no partition lock.
 */
static int
ai_sweep_partition(int partition, TimestampTz now, const AiCalendar *cal, int *visited)
{
	AiPartIter	it;
	AiEntry    *e;
	int			removed = 0;
	TimestampTz next_death = DT_NOEND;

	LWLockAcquire(&ai_locks[partition].lock, LW_EXCLUSIVE);
	ai_part_iter_init(&it, partition);
	while ((e = ai_part_iter_next(&it)) != NULL)
	{
		(*visited)++;
		if (e->resv_head >= 0)
			(void) ai_resv_open_amount(e, now);
		if (!ai_entry_is_live(e, now, cal))
		{
			ai_entry_remove(e, ai_key_hash(&e->key));
			removed++;
		}
		else
			next_death = Min(next_death, ai_entry_dies_at(e, now, cal));
	}
	if (removed == 0)
	{
		/* in vain: nothing here can be freed before the first entry dies */
		ai_table->part_idle_until[partition] = Max(next_death, now + AI_SWEEP_IDLE_USECS);
		ai_table->part_idle_day[partition] = cal->day;
	}
	LWLockRelease(&ai_locks[partition].lock);

	if (removed > 0)
		pg_atomic_fetch_add_u64(&ai_shared->evictions, removed);
	return removed;
}

/*
 * The table is full: sweep partitions from the clock hand on, one at a
 * time, until one frees an entry or AI_SWEEP_MAX_ENTRIES entries were
 * visited (a small table gets a whole pass, a large one a slice).  A
 * partition swept in vain rests until its first entry could die (at least
 * a second; a reset or a rollback there ends the rest), so a flood of new
 * users meeting a table of live entries costs about one pass over the
 * table, never more than one partition lock at a time.
 * Returns true when something was freed.  Caller holds no partition lock.
 */
static bool
ai_make_room(TimestampTz now)
{
	int			visited = 0;
	AiCalendar	cal;

	ai_calendar_at(now, &cal);
	for (int i = 0; i < AI_NUM_PARTITIONS && visited < AI_SWEEP_MAX_ENTRIES; i++)
	{
		int			p = pg_atomic_fetch_add_u32(&ai_table->sweep_hand, 1) % AI_NUM_PARTITIONS;

		/*
		 * An unlocked look: a stale answer only skips or repeats a sweep.
		 * A change of local day (midnight, or ai_ratelimit.timezone)
		 * ends every rest.
		 */
		if (ai_table->part_idle_until[p] > now && ai_table->part_idle_day[p] == cal.day)
			continue;
		if (ai_sweep_partition(p, now, &cal, &visited) > 0)
			return true;
	}
	return false;
}

/*
 * Find or make the entry of a key; when the table is full, make room once
 * (ai_make_room) and try again.  Returns NULL when there is no room.
 *
 * Caller must hold `lock` (the key's partition lock) exclusively; it is
 * released and taken again around the sweep, so the caller must not rely
 * on anything read under it before the call.
 */
AiEntry *
ai_entry_get(const AiKey *key, uint32 hashcode, LWLock *lock,
			 TimestampTz now, const char *id, int idlen)
{
	AiEntry    *e = ai_entry_lookup(key, hashcode, true, now, id, idlen);

	if (e == NULL)
	{
		LWLockRelease(lock);
		(void) ai_make_room(now);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = ai_entry_lookup(key, hashcode, true, now, id, idlen);
	}
	return e;
}

/*
 * The background worker's sweep, every second: free every expired
 * reservation (found by a look at the pool without locks, then confirmed
 * under the owner's partition lock), and while the table is nearly full,
 * reclaim dead entries a few partitions at a time.
 */
void
ai_sweep_background(TimestampTz now)
{
	for (int32 i = 0; i < ai_max_reservations; i++)
	{
		AiReservation *r = &ai_shared->resv[i];
		AiKey		key;
		int64		id;
		uint32		hashcode;
		LWLock	   *lock;
		AiEntry    *e;

		if (r->state != AI_RESV_OPEN || r->expires_at > now)
			continue;
		key = r->key;
		id = r->id;
		hashcode = ai_key_hash(&key);
		lock = ai_partition_lock(hashcode);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		/* still the same open, expired reservation of the same user? */
		if (r->id == id && r->state == AI_RESV_OPEN && r->expires_at <= now &&
			memcmp(&r->key, &key, sizeof(AiKey)) == 0 &&
			(e = ai_entry_lookup(&key, hashcode, false, now, NULL, 0)) != NULL)
			ai_resv_free(e, i);
		LWLockRelease(lock);
	}

	if ((uint64) ai_entry_count() * 100 >= (uint64) ai_max_keys * AI_SWEEP_FILL_PERCENT)
		(void) ai_make_room(now);
}

/* ---- reservation pool ---- */

/* Where an id's search in the index starts. */
static inline uint32
ai_resv_index_home(int64 id)
{
	return murmurhash32((uint32) id ^ murmurhash32((uint32) ((uint64) id >> 32))) &
		ai_resv_index_mask;
}

/* The cell of an id in the index, or -1.  Caller holds resv_lock. */
static int32
ai_resv_index_cell(int64 id)
{
	for (uint32 c = ai_resv_index_home(id);; c = (c + 1) & ai_resv_index_mask)
	{
		int32		slot = ai_resv_index[c];

		if (slot < 0)
			return -1;
		if (ai_shared->resv[slot].id == id)
			return (int32) c;
	}
}

/* Index a slot under its id.  Caller holds resv_lock exclusively. */
static void
ai_resv_index_add(int32 slot)
{
	uint32		c = ai_resv_index_home(ai_shared->resv[slot].id);

	/* at most half full: a free cell is always found */
	while (ai_resv_index[c] >= 0)
		c = (c + 1) & ai_resv_index_mask;
	ai_resv_index[c] = slot;
}

/*
 * Take an id out of the index: empty its cell and move back each later
 * entry of the run that the hole now separates from its home.  Caller
 * holds resv_lock exclusively.
 */
static void
ai_resv_index_remove(int64 id)
{
	int32		hole = ai_resv_index_cell(id);
	uint32		c;

	if (hole < 0)
		return;
	c = (uint32) hole;
	for (;;)
	{
		uint32		home;

		c = (c + 1) & ai_resv_index_mask;
		if (ai_resv_index[c] < 0)
			break;
		home = ai_resv_index_home(ai_shared->resv[ai_resv_index[c]].id);
		/* the entry at c may fill the hole unless its home lies in (hole, c] */
		if (((c - home) & ai_resv_index_mask) >= ((c - (uint32) hole) & ai_resv_index_mask))
		{
			ai_resv_index[hole] = ai_resv_index[c];
			hole = (int32) c;
		}
	}
	ai_resv_index[hole] = -1;
}

/*
 * The slot an id is indexed under, or -1; its owner into *key unless it is
 * NULL.  Takes resv_lock (shared) itself; what it read is confirmed under
 * the owner's partition lock by the caller.
 */
static int32
ai_resv_lookup(int64 id, AiKey *key)
{
	int32		cell;
	int32		slot = -1;

	if (id <= 0)
		return -1;				/* a shadow's negated id is not indexed */
	LWLockAcquire(ai_shared->resv_lock, LW_SHARED);
	cell = ai_resv_index_cell(id);
	if (cell >= 0)
	{
		slot = ai_resv_index[cell];
		if (key != NULL)
			*key = ai_shared->resv[slot].key;
	}
	LWLockRelease(ai_shared->resv_lock);
	return slot;
}

/*
 * The slot of the entry's reservation with this id, or -1 when it has
 * none (freed, never made, or another user's).  Caller holds the entry's
 * partition lock, so a slot found stays the entry's.
 */
int32
ai_resv_find(const AiEntry *entry, int64 id)
{
	int32		slot;

	if (id < 0)
	{
		/* a shadow: an account's list holds what its members' checks made */
		for (slot = entry->resv_head; slot >= 0; slot = ai_shared->resv[slot].next)
			if (ai_shared->resv[slot].id == id)
				return slot;
		return -1;
	}
	slot = ai_resv_lookup(id, NULL);

	if (slot < 0 || ai_shared->resv[slot].state == AI_RESV_FREE ||
		memcmp(&ai_shared->resv[slot].key, &entry->key, sizeof(AiKey)) != 0)
		return -1;
	return slot;
}

/*
 * Take a slot out of a list linked both ways through the pool (the free
 * list, or a user's reservations); `tail` is NULL for a list without one.
 */
static void
ai_resv_unlink(AiReservation *r, int32 *head, int32 *tail)
{
	if (r->prev >= 0)
		ai_shared->resv[r->prev].next = r->next;
	else
		*head = r->next;
	if (r->next >= 0)
		ai_shared->resv[r->next].prev = r->prev;
	else if (tail != NULL)
		*tail = r->prev;
}

/*
 * An amount leaves the entry's open reservations (freed, or being
 * settled; the slot is no longer open).  While the sum fits, it is taken
 * off; a sum that saturated is counted again from the slots still open,
 * so it never falls below what they hold.  Caller holds the entry's
 * partition lock exclusively.
 */
void
ai_resv_unreserve(AiEntry *entry, AiMoney amount)
{
	if (entry->reserved < AI_MONEY_MAX)
		entry->reserved -= amount;
	else
		entry->reserved = ai_resv_held(entry, DT_NOBEGIN, NULL);
}

/*
 * What the entry's open reservations that expire after `after` hold
 * (DT_NOBEGIN: every open one, expired or not), saturating; how many they
 * are into *count unless it is NULL.  Reads only, so a shared lock will
 * do: caller holds the entry's partition lock.
 */
AiMoney
ai_resv_held(const AiEntry *entry, TimestampTz after, int32 *count)
{
	AiMoney		sum = 0;
	int32		n = 0;
	AiResvIter	it;
	AiReservation *r;

	ai_resv_iter_init(&it, entry, AI_RESV_WALK_HOLDING, after);
	while ((r = ai_resv_iter_next(&it, NULL)) != NULL)
	{
		sum = ai_money_add(sum, r->amount);
		n++;
	}
	if (count != NULL)
		*count = n;
	return sum;
}

/* Link a slot taken from the pool into the entry's list, open. */
static int64
ai_resv_link(AiEntry *entry, int32 slot, AiMoney amount, TimestampTz expires_at)
{
	AiReservation *r = &ai_shared->resv[slot];

	r->key = entry->key;
	r->amount = amount;
	r->expires_at = expires_at;
	r->state = AI_RESV_OPEN;
	r->all_rules = false;
	r->shadow = -1;
	r->tokens = 0;
	memset(r->rules, 0, sizeof(r->rules));
	r->next = -1;
	r->prev = entry->resv_tail;
	if (entry->resv_tail >= 0)
		ai_shared->resv[entry->resv_tail].next = slot;
	else
		entry->resv_head = slot;
	entry->resv_tail = slot;
	entry->reserved = ai_money_add(entry->reserved, amount);
	ai_entry_changed(entry);
	return r->id;
}

/*
 * Take a free slot out of the free list and index it under its id.
 * Caller holds resv_lock exclusively.
 */
static void
ai_resv_unfree(int32 slot, int64 id)
{
	ai_resv_unlink(&ai_shared->resv[slot], &ai_shared->resv_free, NULL);
	ai_shared->resv_used++;
	ai_shared->resv[slot].id = id;
	if (id > 0)
		ai_resv_index_add(slot);
}

/*
 * Make an open reservation for the entry: returns its id and sets *slot;
 * 0 when the pool is full; AI_ID_NEED_CEILING when no id can be issued
 * until the caller, with its locks released, has called ai_ids_ensure.
 * Caller must hold the entry's partition lock exclusively, on a primary.
 */
int64
ai_resv_create(AiEntry *entry, AiMoney amount, TimestampTz now, TimestampTz expires_at,
			   int32 *slot)
{
	int32		s;
	int64		id;

	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	s = ai_shared->resv_free;
	if (s < 0)
	{
		LWLockRelease(ai_shared->resv_lock);
		return 0;
	}
	id = ai_id_next(now);
	if (id == AI_ID_NEED_CEILING)
	{
		LWLockRelease(ai_shared->resv_lock);
		return id;
	}
	ai_resv_unfree(s, id);
	LWLockRelease(ai_shared->resv_lock);
	*slot = s;
	return ai_resv_link(entry, s, amount, expires_at);
}

/*
 * Bring a saved or replayed reservation back under its own id, so the
 * application can still settle it, in any free slot; every id issued later
 * is above it.  Returns false when the pool is full, or the id is already
 * held.  Caller must hold the entry's partition lock exclusively (or be the
 * postmaster, loading).
 */
bool
ai_resv_restore(AiEntry *entry, int64 id, AiMoney amount, TimestampTz expires_at,
				int32 *slot)
{
	int32		s;

	if (id == 0 || (id < 0 && ai_resv_find(entry, id) >= 0))
		return false;
	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	if (id > 0)
		ai_ids_floor_id(id);
	s = ai_shared->resv_free;
	if (s < 0 || (id > 0 && ai_resv_index_cell(id) >= 0))
	{
		LWLockRelease(ai_shared->resv_lock);
		return false;
	}
	ai_resv_unfree(s, id);
	LWLockRelease(ai_shared->resv_lock);
	(void) ai_resv_link(entry, s, amount, expires_at);
	/* a save keeps no links: the record finds the shadows by their id */
	ai_shared->resv[s].shadow = AI_RESV_SHADOWS_UNLINKED;
	*slot = s;
	return true;
}

/*
 * Unlink a slot from its entry's list and return it to the pool.  An open
 * slot's amount leaves entry->reserved.  Caller must hold the entry's
 * partition lock exclusively.
 */
void
ai_resv_free(AiEntry *entry, int32 slot)
{
	AiReservation *r = &ai_shared->resv[slot];

	bool		was_open = (r->state == AI_RESV_OPEN);

	ai_entry_changed(entry);
	ai_resv_unlink(r, &entry->resv_head, &entry->resv_tail);
	if (was_open)
		ai_resv_unreserve(entry, r->amount);

	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	if (r->id > 0)
		ai_resv_index_remove(r->id);
	r->id = 0;
	r->state = AI_RESV_FREE;
	r->prev = -1;
	r->next = ai_shared->resv_free;
	if (r->next >= 0)
		ai_shared->resv[r->next].prev = slot;
	ai_shared->resv_free = slot;
	ai_shared->resv_used--;
	LWLockRelease(ai_shared->resv_lock);
}

/*
 * Hold a check's estimate on an account too: a shadow of the reservation in
 * slot `primary` (just made by the check), with the negated id, the same
 * amount, expiry and rules, in the account entry's list.  False when the
 * pool is full.  Caller holds the partition locks of both entries
 * exclusively.
 */
bool
ai_resv_shadow(AiEntry *account, int32 primary, int32 *slot)
{
	AiReservation *p = &ai_shared->resv[primary];
	AiReservation *r;
	int32		s;

	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	s = ai_shared->resv_free;
	if (s < 0)
	{
		LWLockRelease(ai_shared->resv_lock);
		return false;
	}
	ai_resv_unfree(s, -p->id);
	LWLockRelease(ai_shared->resv_lock);
	(void) ai_resv_link(account, s, p->amount, p->expires_at);
	r = &ai_shared->resv[s];
	r->all_rules = p->all_rules;
	r->tokens = p->tokens;
	memcpy(r->rules, p->rules, sizeof(r->rules));
	*slot = s;
	return true;
}

/*
 * The estimate of reservation `id` leaves every account it was held on:
 * its open shadows are freed, each confirmed under its account's partition
 * lock (one at a time).  A shadow being settled stays: its record's
 * transaction ends it.  Caller holds no lock.
 */
void
ai_resv_free_shadows(int64 id, TimestampTz now)
{
	ai_resv_free_shadows_of(MyDatabaseId, id, now);
}

/*
 * Visit every open shadow of reservation id in database dbid, each found by
 * a scan of the pool and confirmed under its account's partition lock (one
 * lock at a time): fn(account entry, slot, arg).  Caller holds no lock.
 */
static void
ai_resv_each_shadow(Oid dbid, int64 id, TimestampTz now,
					void (*fn) (AiEntry *account, int32 slot, void *arg), void *arg)
{
	if (id <= 0)
		return;
	for (int32 i = 0; i < ai_max_reservations; i++)
	{
		AiReservation *r = &ai_shared->resv[i];
		AiKey		key;
		uint32		hashcode;
		LWLock	   *lock;
		AiEntry    *e;

		if (r->id != -id || r->state != AI_RESV_OPEN || r->key.dbid != dbid)
			continue;
		key = r->key;
		hashcode = ai_key_hash(&key);
		lock = ai_partition_lock(hashcode);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		if (r->id == -id && r->state == AI_RESV_OPEN &&
			memcmp(&r->key, &key, sizeof(AiKey)) == 0 &&
			(e = ai_entry_lookup(&key, hashcode, false, now, NULL, 0)) != NULL)
			fn(e, i, arg);
		LWLockRelease(lock);
	}
}

static void
ai_shadow_free(AiEntry *account, int32 slot, void *arg)
{
	ai_resv_free(account, slot);
	ai_partition_changed(ai_key_hash(&account->key));
}

/* The same for a reservation of database dbid (replay runs in none). */
void
ai_resv_free_shadows_of(Oid dbid, int64 id, TimestampTz now)
{
	ai_resv_each_shadow(dbid, id, now, ai_shadow_free, NULL);
}

/*
 * The accounts an open reservation of user u is held on, nearest first, as
 * its check charged them: their keys into keys[AI_MAX_ACCOUNT_DEPTH].
 * Returns how many (0: the check charged no account), or -1 when the
 * reservation is not open.  *ordered is false when the shadows were found
 * by their id (a reservation loaded from a save), in no order.  Shadows
 * are read without their accounts' locks: each is confirmed by its id.
 * Caller holds no lock.
 */
int
ai_resv_accounts(const AiUser *u, int64 id, AiKey *keys, bool *ordered)
{
	AiEntry    *e;
	int32		slot;
	int32		next = -1;
	int			n = 0;

	*ordered = true;
	LWLockAcquire(u->lock, LW_SHARED);
	e = ai_entry_lookup(&u->key, u->hashcode, false, 0, NULL, 0);
	slot = e != NULL ? ai_resv_find(e, id) : -1;
	if (slot < 0 || ai_shared->resv[slot].state != AI_RESV_OPEN)
	{
		LWLockRelease(u->lock);
		return -1;
	}
	next = ai_shared->resv[slot].shadow;
	for (; next >= 0 && n < AI_MAX_ACCOUNT_DEPTH; next = ai_shared->resv[next].shadow)
	{
		AiReservation *s = &ai_shared->resv[next];

		if (s->id != -id || s->state == AI_RESV_FREE)
			break;
		keys[n++] = s->key;
	}
	LWLockRelease(u->lock);
	if (next != AI_RESV_SHADOWS_UNLINKED)
		return n;
	/* loaded from a save: every shadow of the id, in no order */
	*ordered = false;
	n = 0;
	for (int32 i = 0; i < ai_max_reservations && n < AI_MAX_ACCOUNT_DEPTH; i++)
	{
		AiReservation *s = &ai_shared->resv[i];

		if (s->id == -id && s->state != AI_RESV_FREE && s->key.dbid == u->key.dbid)
			keys[n++] = s->key;
	}
	return n;
}

/* What ai_resv_extend holds its shadows until, and the keys it met. */
typedef struct AiShadowExtend
{
	TimestampTz until;
	AiKey	   *shadows;
	int		   *nshadows;
} AiShadowExtend;

static void
ai_shadow_extend(AiEntry *account, int32 slot, void *arg)
{
	AiShadowExtend *x = (AiShadowExtend *) arg;
	AiReservation *r = &ai_shared->resv[slot];

	r->expires_at = Max(r->expires_at, x->until);
	ai_entry_changed(account);
	if (*x->nshadows < AI_MAX_ACCOUNT_DEPTH)
		x->shadows[(*x->nshadows)++] = r->key;
}

/*
 * Hold reservation `id` of user `owner` until `until` (ai_extend_reservation),
 * on its user and on every account its check held it on, when it is open
 * and has not expired: a reservation is never shortened, and one that
 * expired stays so (its room may have been taken).  Returns the expiry it
 * has now, or 0 when it is not open (*settling: a record is settling it).
 * Caller holds no lock.
 */
TimestampTz
ai_resv_extend(int64 id, const AiKey *owner, TimestampTz now, TimestampTz until, bool *settling,
			   AiReservation *copy, AiKey *shadows, int *nshadows)
{
	int32		slot;
	uint32		hashcode = ai_key_hash(owner);
	LWLock	   *lock = ai_partition_lock(hashcode);
	AiEntry    *e;
	TimestampTz result = 0;
	bool		held_on_accounts = true;
	AiShadowExtend ext;

	*settling = false;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(owner, hashcode, false, now, NULL, 0);
	slot = e != NULL ? ai_resv_find(e, id) : -1;
	if (slot >= 0)
	{
		AiReservation *r = &ai_shared->resv[slot];

		*settling = (r->state == AI_RESV_SETTLING);
		if (r->state == AI_RESV_OPEN && r->expires_at > now)
		{
			r->expires_at = Max(r->expires_at, until);
			result = r->expires_at;
			*copy = *r;
			held_on_accounts = (r->shadow != -1);
			ai_entry_changed(e);
		}
	}
	LWLockRelease(lock);
	*nshadows = 0;
	if (result == 0 || !held_on_accounts)
		return result;
	/* its shadows, each under its account's lock (rare: long calls only) */
	ext.until = result;
	ext.shadows = shadows;
	ext.nshadows = nshadows;
	ai_resv_each_shadow(MyDatabaseId, id, now, ai_shadow_extend, &ext);
	return result;
}

/*
 * Give back a reservation of this database by its id (ai_release_reservation):
 * its slot is found by the index, then confirmed under its owner's
 * partition lock.  With owner, only a reservation of that user: another
 * user's is not touched.  Caller holds no lock.
 */
AiReleaseResult
ai_resv_release(int64 id, TimestampTz now, const AiKey *owner, AiKey *released)
{
	AiKey		key;
	int32		slot = ai_resv_lookup(id, &key);
	uint32		hashcode;
	LWLock	   *lock;
	AiEntry    *e;
	AiReleaseResult result = AI_RELEASE_NOT_FOUND;
	bool		shadows = true;

	if (slot < 0)
	{
		/* settled, or expired and swept: an account may still hold it */
		if (owner == NULL)
			ai_resv_free_shadows(id, now);
		return AI_RELEASE_NOT_FOUND;
	}
	if (key.dbid != MyDatabaseId ||
		(owner != NULL && memcmp(&key, owner, sizeof(AiKey)) != 0))
		return AI_RELEASE_NOT_FOUND;

	hashcode = ai_key_hash(&key);
	lock = ai_partition_lock(hashcode);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(&key, hashcode, false, now, NULL, 0);
	/* the slot may have been freed and reused since the look: find it again */
	slot = e != NULL ? ai_resv_find(e, id) : -1;
	if (slot >= 0)
	{
		AiReservation *r = &ai_shared->resv[slot];

		if (r->state == AI_RESV_SETTLING)
			result = AI_RELEASE_SETTLING;
		else
		{
			result = r->expires_at > now ? AI_RELEASE_DONE : AI_RELEASE_EXPIRED;
			*released = key;
			shadows = (r->shadow != -1);
			ai_resv_free(e, slot);
			ai_partition_changed(hashcode);
		}
	}
	LWLockRelease(lock);
	/*
	 * and from the accounts it was held on, unless a record settles it (a
	 * reservation whose check charged no account has none to look for)
	 */
	if (result != AI_RELEASE_SETTLING && shadows)
		ai_resv_free_shadows(id, now);
	return result;
}

/*
 * Drop the entry's expired open reservations and return what the rest
 * hold.  Caller must hold the entry's partition lock exclusively.
 */
AiMoney
ai_resv_open_amount(AiEntry *entry, TimestampTz now)
{
	AiResvIter	it;
	AiReservation *r;
	int32		slot;

	ai_resv_iter_init(&it, entry, AI_RESV_WALK_ALL, now);
	while ((r = ai_resv_iter_next(&it, &slot)) != NULL)
		if (r->state == AI_RESV_OPEN && r->expires_at <= now)
			ai_resv_free(entry, slot);
	return entry->reserved;
}

/*
 * Reservations that are open and not expired, or being settled: a snapshot
 * read without partition locks, for monitoring.
 */
int32
ai_resv_open_count(TimestampTz now)
{
	int32		n = 0;

	for (int32 i = 0; i < ai_max_reservations; i++)
	{
		AiReservation *r = &ai_shared->resv[i];

		if (r->state == AI_RESV_SETTLING ||
			(r->state == AI_RESV_OPEN && r->expires_at > now))
			n++;
	}
	return n;
}

/*
 * Problems found by ai_verify, written into a buffer allocated before it
 * takes every lock (no allocation, hence no error, under them).
 */
#define AI_VERIFY_MAX_PROBLEMS	64

typedef struct AiVerifyProblems
{
	int			n;
	char		msg[AI_VERIFY_MAX_PROBLEMS][128];
} AiVerifyProblems;

static void ai_verify_problem(AiVerifyProblems *p, const char *fmt,...) pg_attribute_printf(2, 3);

static void
ai_verify_problem(AiVerifyProblems *p, const char *fmt,...)
{
	va_list		ap;

	if (p->n < AI_VERIFY_MAX_PROBLEMS)
	{
		va_start(ap, fmt);
		vsnprintf(p->msg[p->n], sizeof(p->msg[p->n]), fmt, ap);
		va_end(ap);
	}
	p->n++;
}

/*
 * ai_verify for one entry: its reservation list links back and forth, every
 * slot in it belongs to it, its reserved sum is its open slots' sum, and no
 * record of it is in flight.  Counts the linked slots in *linked.
 */
static void
ai_verify_entry(AiEntry *e, AiVerifyProblems *problems, int64 *linked)
{
	AiMoney		open_sum = 0;
	int32		prev = -1;
	int			n = 0;

	for (int32 s = e->resv_head; s >= 0; s = ai_shared->resv[s].next)
	{
		AiReservation *r = &ai_shared->resv[s];

		if (++n > ai_max_reservations)
		{
			ai_verify_problem(problems, "reservation list of a user loops");
			break;
		}
		if (r->state == AI_RESV_FREE)
			ai_verify_problem(problems, "free reservation slot %d is linked to a user", s);
		if (memcmp(&r->key, &e->key, sizeof(AiKey)) != 0)
			ai_verify_problem(problems, "reservation slot %d is linked to the wrong user", s);
		if (r->prev != prev)
			ai_verify_problem(problems, "reservation slot %d has a broken back link", s);
		if (r->state == AI_RESV_OPEN)
			open_sum += r->amount;
		prev = s;
		(*linked)++;
	}
	if (prev != e->resv_tail)
		ai_verify_problem(problems, "a user's reservation tail is wrong");
	if (open_sum != e->reserved)
		ai_verify_problem(problems, "a user's reserved sum is " INT64_FORMAT " but its open reservations hold " INT64_FORMAT,
						  e->reserved, open_sum);
	if (e->inflight != 0 || ai_inflight_cost(e) != 0)
		ai_verify_problem(problems, "%u recorded calls of a user are still in flight", e->inflight);
}

/*
 * Check the shared state for leaks and broken links: every reservation slot
 * is either free or linked to exactly one entry of the same key; each
 * entry's reserved sum equals its open slots; no record is in flight (the
 * caller runs this when no other transaction is open); every slot of the
 * table is in use or free, once; every entry is in its partition and
 * counted.  Appends one message per problem to *problems.  Takes every
 * partition lock and resv_lock, in shared mode, and allocates nothing
 * while it holds them.
 */
void
ai_verify(List **problems_out)
{
	AiVerifyProblems *problems = palloc(sizeof(AiVerifyProblems));
	AiPartIter	it;
	AiEntry    *e;
	int64		indexed = 0;
	int64		shadows = 0;
	int64		linked = 0;
	int64		free_len = 0;
	int64		counted = 0;
	int64		free_slots = 0;

	problems->n = 0;
	ai_lock_all(LW_SHARED);
	LWLockAcquire(ai_shared->resv_lock, LW_SHARED);
	/* slots move on and off the free list only under an exclusive lock */
	for (int32 s = ai_table->free_head; s >= 0 && free_slots <= ai_max_keys; s = ai_entries[s].next)
		free_slots++;
	if (free_slots + ai_entry_count() != (uint32) ai_max_keys)
		ai_verify_problem(problems, "entry slots leaked: " INT64_FORMAT " free + %u in use of %d",
						  free_slots, ai_entry_count(), ai_max_keys);

	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		int32		in_part = 0;

		ai_part_iter_init(&it, p);
		while ((e = ai_part_iter_next(&it)) != NULL)
		{
			if ((ai_key_hash(&e->key) % AI_NUM_PARTITIONS) != (uint32) p)
				ai_verify_problem(problems, "an entry is in the wrong partition");
			in_part++;
			ai_verify_entry(e, problems, &linked);
		}
		if (in_part != ai_table->part_count[p])
			ai_verify_problem(problems, "partition %d counts %d entries but holds %d",
							  p, ai_table->part_count[p], in_part);
		counted += in_part;
	}
	if (counted != ai_entry_count())
		ai_verify_problem(problems, "the table counts %u entries but holds " INT64_FORMAT,
						  ai_entry_count(), counted);
	for (int32 s = ai_shared->resv_free; s >= 0 && free_len <= ai_max_reservations; s = ai_shared->resv[s].next)
		free_len++;
	/* every slot in use is found by its id, and the index holds nothing else */
	for (int32 s = 0; s < ai_max_reservations; s++)
	{
		int32		cell = ai_shared->resv[s].state == AI_RESV_FREE ? -1 :
			ai_resv_index_cell(ai_shared->resv[s].id);

		if (ai_shared->resv[s].state != AI_RESV_FREE && ai_shared->resv[s].id < 0)
			shadows++;			/* not indexed */
		else if (ai_shared->resv[s].state != AI_RESV_FREE && (cell < 0 || ai_resv_index[cell] != s))
			ai_verify_problem(problems, "reservation slot %d is not found by its id", s);
	}
	for (uint32 c = 0; c <= ai_resv_index_mask; c++)
		if (ai_resv_index[c] >= 0)
			indexed++;
	if (indexed + shadows != ai_shared->resv_used)
		ai_verify_problem(problems, "the id index holds " INT64_FORMAT " reservations but %d are in use",
						  indexed, ai_shared->resv_used);
	if (linked != ai_shared->resv_used)
		ai_verify_problem(problems, INT64_FORMAT " reservation slots are linked to users but %d are in use",
						  linked, ai_shared->resv_used);
	if (free_len + ai_shared->resv_used != ai_max_reservations)
		ai_verify_problem(problems, "reservation slots leaked: " INT64_FORMAT " free + %d in use of %d",
						  free_len, ai_shared->resv_used, ai_max_reservations);

	LWLockRelease(ai_shared->resv_lock);
	ai_unlock_all();

	for (int i = 0; i < Min(problems->n, AI_VERIFY_MAX_PROBLEMS); i++)
		*problems_out = lappend(*problems_out, pstrdup(problems->msg[i]));
	if (problems->n > AI_VERIFY_MAX_PROBLEMS)
		*problems_out = lappend(*problems_out,
								psprintf("%d more problems", problems->n - AI_VERIFY_MAX_PROBLEMS));
	pfree(problems);
}

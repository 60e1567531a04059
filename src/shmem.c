/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		The shared-memory counters of ai_ratelimit: one hash entry per
 *		(database, user), and a fixed pool of budget reservations.
 *
 * Locking rules
 * -------------
 * The hash is partitioned into AI_NUM_PARTITIONS parts, each with its own
 * LWLock (tranche "ai_ratelimit").  A partition lock guards both the hash
 * structure of that partition (shared to look up, exclusive to insert or
 * remove) and every field of the entries that hash into it.  Because a check
 * reads and then changes counters, it holds its partition lock exclusively,
 * for a few dozen instructions; no I/O, no SPI and no ereport(ERROR) happen
 * while a partition lock is held.
 *
 * Reclaiming dead entries when the hash is full takes every partition lock,
 * exclusively, in partition order.
 *
 * The reservation pool (ai_resv_* below): a slot in use belongs to one user
 * and is read and changed only under that user's partition lock.  The free list, the slot
 * counters and the id sequence are guarded by resv_lock, always taken after
 * a partition lock, never before.
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

#include "ai_ratelimit.h"

#define AI_NUM_PARTITIONS		128
#define AI_TRANCHE				"ai_ratelimit"

AiShared   *ai_shared = NULL;
HTAB	   *ai_hash = NULL;
static LWLockPadded *ai_locks = NULL;

static uint32 ai_key_hash_fn(const void *key, Size keysize);
static void ai_entry_reclaim(TimestampTz now);

static Size
ai_resv_pool_size(void)
{
	return add_size(offsetof(AiShared, resv),
					mul_size(ai_max_reservations, sizeof(AiReservation)));
}

static Size
ai_shmem_size(void)
{
	return add_size(add_size(MAXALIGN(ai_resv_pool_size()), MAXALIGN(ai_stats_size())),
					hash_estimate_size(ai_max_keys, sizeof(AiEntry)));
}

/* Called from shmem_request_hook. */
void
ai_shmem_request(void)
{
	RequestAddinShmemSpace(ai_shmem_size());
	RequestNamedLWLockTranche(AI_TRANCHE, AI_NUM_PARTITIONS + 2);
}

/* Called from shmem_startup_hook; takes AddinShmemInitLock itself. */
void
ai_shmem_startup(void)
{
	bool		found;
	HASHCTL		info;

	ai_shared = NULL;
	ai_hash = NULL;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);

	ai_shared = ShmemInitStruct("ai_ratelimit", ai_resv_pool_size(), &found);
	ai_locks = GetNamedLWLockTranche(AI_TRANCHE);
	if (!found)
	{
		ai_shared->resv_lock = &ai_locks[AI_NUM_PARTITIONS].lock;
		ai_shared->stats_lock = &ai_locks[AI_NUM_PARTITIONS + 1].lock;
		pg_atomic_init_u32(&ai_shared->plans_gen, 1);
		pg_atomic_init_u32(&ai_shared->prices_gen, 1);
		pg_atomic_init_u32(&ai_shared->usage_gen, 1);
		pg_atomic_init_u32(&ai_shared->dirty, 0);
		pg_atomic_init_u64(&ai_shared->evictions, 0);
		pg_atomic_init_u64(&ai_shared->full_refusals, 0);
		ai_shared->resv_seq = 1;
		ai_shared->resv_used = 0;
		for (int i = 0; i < ai_max_reservations; i++)
		{
			ai_shared->resv[i].id = 0;
			ai_shared->resv[i].state = AI_RESV_FREE;
			ai_shared->resv[i].next = (i + 1 < ai_max_reservations) ? i + 1 : -1;
			ai_shared->resv[i].prev = -1;
		}
		ai_shared->resv_free = ai_max_reservations > 0 ? 0 : -1;
	}

	ai_stats_init(found);

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(AiKey);
	info.entrysize = sizeof(AiEntry);
	info.num_partitions = AI_NUM_PARTITIONS;
	info.hash = ai_key_hash_fn;
	ai_hash = ShmemInitHash("ai_ratelimit counters",
							ai_max_keys, ai_max_keys,
							&info,
							HASH_ELEM | HASH_FUNCTION | HASH_PARTITION | HASH_FIXED_SIZE);

	LWLockRelease(AddinShmemInitLock);

	/*
	 * In the postmaster: restore the saved counters into new shared memory
	 * (at start, and after a crash), and save them at a clean shutdown.
	 */
	if (!IsUnderPostmaster)
	{
		if (!found)
			ai_load();
		on_shmem_exit(ai_save_at_exit, (Datum) 0);
	}
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
	if (ai_shared == NULL || ai_hash == NULL)
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

/*
 * The hash value of a key: its own 32 hash bits, mixed with the database.
 * Also the dynahash hash function, so a lookup hashes the user id once.
 */
uint32
ai_key_hash(const AiKey *key)
{
	return key->h32 ^ murmurhash32((uint32) key->dbid);
}

static uint32
ai_key_hash_fn(const void *key, Size keysize)
{
	return ai_key_hash((const AiKey *) key);
}

LWLock *
ai_partition_lock(uint32 hashcode)
{
	return &ai_locks[hashcode % AI_NUM_PARTITIONS].lock;
}

static void
ai_entry_init(AiEntry *e, const char *id, int idlen)
{
	/* key already set by hash_search */
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
	e->inflight_cost = 0;
	e->recorded_total = 0;
	e->reserved = 0;
	e->resv_head = -1;
	e->resv_tail = -1;
	e->alerts_sent = 0;
	e->tokens_head = 0;
	memset(e->tokens, 0, sizeof(e->tokens));
	e->plan_hash = 0;
	e->id_len = (uint8) Min(idlen, 255);
	memcpy(e->id_prefix, id, Min(idlen, AI_ID_PREFIX_LEN));
}

/*
 * Find the entry of a key; with create, make it.  Returns NULL when it does
 * not exist (or cannot be made because every slot holds a live entry).
 *
 * Caller must hold the key's partition lock, exclusively when create.
 */
AiEntry *
ai_entry_lookup(const AiKey *key, uint32 hashcode, bool create,
				TimestampTz now, const char *id, int idlen)
{
	AiEntry    *e;
	bool		found;

	e = hash_search_with_hash_value(ai_hash, key, hashcode,
									create ? HASH_ENTER_NULL : HASH_FIND,
									&found);
	if (e != NULL && !found)
		ai_entry_init(e, id, idlen);
	return e;
}

/*
 * Find or make the entry of a key; when the hash is full, reclaim dead
 * entries once and try again.  Returns NULL only when every entry is live.
 *
 * Caller must hold `lock` (the key's partition lock) exclusively; it is
 * released and taken again around the reclaim, so the caller must not rely
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
		ai_entry_reclaim(now);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = ai_entry_lookup(key, hashcode, true, now, id, idlen);
	}
	return e;
}

/*
 * Does an entry hold anything that a later check or record needs: a record
 * in flight, a reservation, today's count, a burst place or tokens still in
 * their window?  The one rule for both reclaiming (a dead entry may go) and
 * saving (only live entries are written).  Yesterday's count never counts
 * again, so it does not keep an entry alive.  Caller holds the entry's
 * partition lock.
 */
bool
ai_entry_is_live(AiEntry *e, TimestampTz now, int32 today)
{
	if (e->inflight > 0 || e->resv_head >= 0)
		return true;
	if (e->day == today && e->daily_count > 0)
		return true;
	if (e->burst_window_ms > 0 && ai_burst_count(e, now) > 0)
		return true;
	return ai_tokens_count(e, now) > 0;
}

/*
 * Remove every dead entry.  Takes all partition locks; caller must hold
 * none of them.
 */
static void
ai_entry_reclaim(TimestampTz now)
{
	HASH_SEQ_STATUS status;
	AiEntry    *e;
	AiCalendar	cal;
	uint64		removed = 0;

	ai_calendar_at(now, &cal);

	ai_lock_all(LW_EXCLUSIVE);

	hash_seq_init(&status, ai_hash);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		if (!ai_entry_is_live(e, now, cal.day))
		{
			hash_search(ai_hash, &e->key, HASH_REMOVE, NULL);
			removed++;
		}
	}

	ai_unlock_all();

	pg_atomic_fetch_add_u64(&ai_shared->evictions, removed);
}

/* ---- reservation pool ---- */

/* The slot an id names, or NULL when the id cannot be ours. */
AiReservation *
ai_resv_slot(int64 id)
{
	int64		slot;

	if (id <= 0)
		return NULL;
	slot = id & AI_RESV_SLOT_MASK;
	if (slot >= ai_max_reservations)
		return NULL;
	return &ai_shared->resv[slot];
}

/*
 * Make an open reservation for the entry and return its id, or 0 when the
 * pool is full.  Caller must hold the entry's partition lock exclusively.
 */
int64
ai_resv_create(AiEntry *entry, AiMoney amount, TimestampTz expires_at)
{
	int32		slot;
	AiReservation *r;

	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	slot = ai_shared->resv_free;
	if (slot < 0)
	{
		LWLockRelease(ai_shared->resv_lock);
		return 0;
	}
	r = &ai_shared->resv[slot];
	ai_shared->resv_free = r->next;
	ai_shared->resv_used++;
	r->id = (ai_shared->resv_seq++ << AI_RESV_SLOT_BITS) | slot;
	LWLockRelease(ai_shared->resv_lock);

	r->key = entry->key;
	r->amount = amount;
	r->expires_at = expires_at;
	r->state = AI_RESV_OPEN;
	r->next = -1;
	r->prev = entry->resv_tail;
	if (entry->resv_tail >= 0)
		ai_shared->resv[entry->resv_tail].next = slot;
	else
		entry->resv_head = slot;
	entry->resv_tail = slot;
	entry->reserved = ai_money_add(entry->reserved, amount);
	return r->id;
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

	if (r->state == AI_RESV_OPEN)
		entry->reserved -= r->amount;
	if (r->prev >= 0)
		ai_shared->resv[r->prev].next = r->next;
	else
		entry->resv_head = r->next;
	if (r->next >= 0)
		ai_shared->resv[r->next].prev = r->prev;
	else
		entry->resv_tail = r->prev;

	LWLockAcquire(ai_shared->resv_lock, LW_EXCLUSIVE);
	r->id = 0;
	r->state = AI_RESV_FREE;
	r->prev = -1;
	r->next = ai_shared->resv_free;
	ai_shared->resv_free = slot;
	ai_shared->resv_used--;
	LWLockRelease(ai_shared->resv_lock);
}

/*
 * Drop the entry's expired open reservations and return what the rest
 * hold.  Caller must hold the entry's partition lock exclusively.
 */
AiMoney
ai_resv_open_amount(AiEntry *entry, TimestampTz now)
{
	int32		slot = entry->resv_head;

	while (slot >= 0)
	{
		AiReservation *r = &ai_shared->resv[slot];
		int32		next = r->next;

		if (r->state == AI_RESV_OPEN && r->expires_at <= now)
			ai_resv_free(entry, slot);
		slot = next;
	}
	return entry->reserved;
}

/*
 * Check the shared state for leaks and broken links: every reservation slot
 * is either free or linked to exactly one entry of the same key; each
 * entry's reserved sum equals its open slots; no record is in flight (the
 * caller runs this when no other transaction is open).  Appends one message
 * per problem to *problems.  Takes every partition lock and resv_lock, in
 * shared mode.
 */
void
ai_verify(List **problems)
{
	HASH_SEQ_STATUS status;
	AiEntry    *e;
	int64		linked = 0;
	int64		free_len = 0;

	ai_lock_all(LW_SHARED);
	LWLockAcquire(ai_shared->resv_lock, LW_SHARED);

	hash_seq_init(&status, ai_hash);
	while ((e = hash_seq_search(&status)) != NULL)
	{
		AiMoney		open_sum = 0;
		int32		prev = -1;
		int			n = 0;

		for (int32 s = e->resv_head; s >= 0; s = ai_shared->resv[s].next)
		{
			AiReservation *r = &ai_shared->resv[s];

			if (++n > ai_max_reservations)
			{
				*problems = lappend(*problems, psprintf("reservation list of a user loops"));
				break;
			}
			if (r->state == AI_RESV_FREE)
				*problems = lappend(*problems, psprintf("free reservation slot %d is linked to a user", s));
			if (memcmp(&r->key, &e->key, sizeof(AiKey)) != 0)
				*problems = lappend(*problems, psprintf("reservation slot %d is linked to the wrong user", s));
			if (r->prev != prev)
				*problems = lappend(*problems, psprintf("reservation slot %d has a broken back link", s));
			if (r->state == AI_RESV_OPEN)
				open_sum += r->amount;
			prev = s;
			linked++;
		}
		if (prev != e->resv_tail)
			*problems = lappend(*problems, psprintf("a user's reservation tail is wrong"));
		if (open_sum != e->reserved)
			*problems = lappend(*problems,
								psprintf("a user's reserved sum is " INT64_FORMAT " but its open reservations hold " INT64_FORMAT,
										 e->reserved, open_sum));
		if (e->inflight != 0 || e->inflight_cost != 0)
			*problems = lappend(*problems,
								psprintf("%u recorded calls of a user are still in flight", e->inflight));
	}
	for (int32 s = ai_shared->resv_free; s >= 0 && free_len <= ai_max_reservations; s = ai_shared->resv[s].next)
		free_len++;
	if (linked != ai_shared->resv_used)
		*problems = lappend(*problems,
							psprintf(INT64_FORMAT " reservation slots are linked to users but %d are in use",
									 linked, ai_shared->resv_used));
	if (free_len + ai_shared->resv_used != ai_max_reservations)
		*problems = lappend(*problems,
							psprintf("reservation slots leaked: " INT64_FORMAT " free + %d in use of %d",
									 free_len, ai_shared->resv_used, ai_max_reservations));

	LWLockRelease(ai_shared->resv_lock);
	ai_unlock_all();
}

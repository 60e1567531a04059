/*-------------------------------------------------------------------------
 *
 * reservations.c
 *		The pool of budget reservations: made by a check, settled by a
 *		record, released, extended, expired; and ai_ratelimit_verify().
 *
 * The slots live in shared memory (AiShared.resv, shmem.c), with the index
 * of their ids (ai_resv_index).  A slot in use belongs to one user (or, a
 * shadow, to one account) and is read and changed only under its owner's
 * partition lock.  The free list, the slot counters, the index of ids and
 * the last id issued (resvid.c) are guarded by resv_lock, the innermost
 * lock: taken under a partition lock or alone (looking an id up before its
 * owner's lock is known), and no lock is taken while it is held.  ids_lock
 * (resvid.c) is taken with no other lock held.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "accounts.h"
#include "reservations.h"
#include "resvid.h"

AiReservation *ai_resv_slots = NULL;

/*
 * The index of reservation ids: open addressing with linear probing over
 * a power of 2 of at least twice max_reservations cells, each a slot
 * number or -1.  Guarded by resv_lock.
 */
static int32 *ai_resv_index = NULL;
static uint32 ai_resv_index_mask = 0;

static uint32
ai_resv_index_cells(void)
{
	uint32		n = 64;

	while (n < 2 * (uint32) ai_max_reservations)
		n *= 2;
	return n;
}

/* The slots and the index of their ids, for shmem_request_hook. */
Size
ai_resv_shmem_size(void)
{
	return add_size(MAXALIGN(mul_size(ai_max_reservations, sizeof(AiReservation))),
					mul_size(ai_resv_index_cells(), sizeof(int32)));
}

/*
 * Attach the slots and the index, made empty when new (every slot on the
 * free list).  From shmem_startup_hook, under AddinShmemInitLock, after
 * ai_shmem_startup.
 */
void
ai_resv_shmem_init(void)
{
	bool		found;
	bool		index_found;

	ai_resv_slots = ShmemInitStruct("ai_ratelimit reservations",
									mul_size(ai_max_reservations, sizeof(AiReservation)),
									&found);
	if (!found)
	{
		ai_shared->resv_used = 0;
		for (int i = 0; i < ai_max_reservations; i++)
		{
			ai_resv_slots[i].id = 0;
			ai_resv_slots[i].state = AI_RESV_FREE;
			/* the free list is linked both ways, so a slot can leave it */
			ai_resv_slots[i].next = (i + 1 < ai_max_reservations) ? i + 1 : -1;
			ai_resv_slots[i].prev = i - 1;
		}
		ai_shared->resv_free = ai_max_reservations > 0 ? 0 : -1;
	}
	ai_resv_index_mask = ai_resv_index_cells() - 1;
	ai_resv_index = ShmemInitStruct("ai_ratelimit reservation index",
									mul_size(ai_resv_index_cells(), sizeof(int32)),
									&index_found);
	if (!index_found)
		for (uint32 i = 0; i <= ai_resv_index_mask; i++)
			ai_resv_index[i] = -1;
}

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
		if (ai_resv_slots[slot].id == id)
			return (int32) c;
	}
}

/* Index a slot under its id.  Caller holds resv_lock exclusively. */
static void
ai_resv_index_add(int32 slot)
{
	uint32		c = ai_resv_index_home(ai_resv_slots[slot].id);

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
		home = ai_resv_index_home(ai_resv_slots[ai_resv_index[c]].id);
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
			*key = ai_resv_slots[slot].key;
	}
	LWLockRelease(ai_shared->resv_lock);
	return slot;
}

/* Start a walk of an entry's reservations (AiResvWalk). */
void
ai_resv_iter_init(AiResvIter *it, const AiEntry *e, AiResvWalk walk, TimestampTz at)
{
	it->next = e->resv_head;
	it->walk = walk;
	it->at = at;
}

/* The next reservation of the walk, its slot in *slot; NULL at the end. */
AiReservation *
ai_resv_iter_next(AiResvIter *it, int32 *slot)
{
	while (it->next >= 0)
	{
		int32		s = it->next;
		AiReservation *r = &ai_resv_slots[s];

		it->next = r->next;
		if (it->walk == AI_RESV_WALK_ALL ||
			(r->state == AI_RESV_OPEN && r->expires_at > it->at) ||
			(it->walk == AI_RESV_WALK_LIVE && r->state == AI_RESV_SETTLING))
		{
			if (slot != NULL)
				*slot = s;
			return r;
		}
	}
	return NULL;
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
		for (slot = entry->resv_head; slot >= 0; slot = ai_resv_slots[slot].next)
			if (ai_resv_slots[slot].id == id)
				return slot;
		return -1;
	}
	slot = ai_resv_lookup(id, NULL);

	if (slot < 0 || ai_resv_slots[slot].state == AI_RESV_FREE ||
		memcmp(&ai_resv_slots[slot].key, &entry->key, sizeof(AiKey)) != 0)
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
		ai_resv_slots[r->prev].next = r->next;
	else
		*head = r->next;
	if (r->next >= 0)
		ai_resv_slots[r->next].prev = r->prev;
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
	AiReservation *r = &ai_resv_slots[slot];

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
		ai_resv_slots[entry->resv_tail].next = slot;
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
	ai_resv_unlink(&ai_resv_slots[slot], &ai_shared->resv_free, NULL);
	ai_shared->resv_used++;
	ai_resv_slots[slot].id = id;
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
	ai_resv_slots[s].shadow = AI_RESV_SHADOWS_UNLINKED;
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
	AiReservation *r = &ai_resv_slots[slot];

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
		ai_resv_slots[r->next].prev = slot;
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
	AiReservation *p = &ai_resv_slots[primary];
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
	r = &ai_resv_slots[s];
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
		AiReservation *r = &ai_resv_slots[i];
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
	if (slot < 0 || ai_resv_slots[slot].state != AI_RESV_OPEN)
	{
		LWLockRelease(u->lock);
		return -1;
	}
	next = ai_resv_slots[slot].shadow;
	for (; next >= 0 && n < AI_MAX_ACCOUNT_DEPTH; next = ai_resv_slots[next].shadow)
	{
		AiReservation *s = &ai_resv_slots[next];

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
		AiReservation *s = &ai_resv_slots[i];

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
	AiReservation *r = &ai_resv_slots[slot];

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
		AiReservation *r = &ai_resv_slots[slot];

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
		AiReservation *r = &ai_resv_slots[slot];

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
		AiReservation *r = &ai_resv_slots[i];

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

	for (int32 s = e->resv_head; s >= 0; s = ai_resv_slots[s].next)
	{
		AiReservation *r = &ai_resv_slots[s];

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
	for (int32 s = ai_shared->resv_free; s >= 0 && free_len <= ai_max_reservations; s = ai_resv_slots[s].next)
		free_len++;
	/* every slot in use is found by its id, and the index holds nothing else */
	for (int32 s = 0; s < ai_max_reservations; s++)
	{
		int32		cell = ai_resv_slots[s].state == AI_RESV_FREE ? -1 :
			ai_resv_index_cell(ai_resv_slots[s].id);

		if (ai_resv_slots[s].state != AI_RESV_FREE && ai_resv_slots[s].id < 0)
			shadows++;			/* not indexed */
		else if (ai_resv_slots[s].state != AI_RESV_FREE && (cell < 0 || ai_resv_index[cell] != s))
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

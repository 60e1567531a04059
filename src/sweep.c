/*-------------------------------------------------------------------------
 *
 * sweep.c
 *		An entry's life: what keeps it in the table, the sweeps that free
 *		the rest (when a new user meets a full table, and in the
 *		background), an entry got with room made for it, and forgetting an
 *		entry or a whole database; a holder's stamps, which say whether a
 *		use cached from its records is still exact.
 *
 * When the table is full, a new user's check sweeps a few partitions, one
 * at a time, for entries that hold nothing live (ai_make_room); the
 * background worker sweeps too, and frees expired reservations.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "reservations.h"
#include "rings.h"
#include "sweep.h"

/* A sweep that freed nothing is not repeated on that partition for at least 1 s. */
#define AI_SWEEP_IDLE_USECS		USECS_PER_SEC
/*
 * A new user meeting a full table sweeps whole partitions until one frees
 * an entry or it has visited this many entries.
 */
#define AI_SWEEP_MAX_ENTRIES	4096
/* The worker sweeps for room while the table is at least this full (%). */
#define AI_SWEEP_FILL_PERCENT	90

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

		LWLockAcquire(ai_partition_lock_at(p), LW_EXCLUSIVE);
		ai_part_iter_init(&it, p);
		while ((e = ai_part_iter_next(&it)) != NULL)
			if (e->key.dbid == dbid)
			{
				ai_entry_forget(e);
				removed++;
			}
		LWLockRelease(ai_partition_lock_at(p));
	}
	if (removed > 0)
		ai_mark_dirty();
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
	if (AI_ENTRY_IS_RULE(e) && !ai_window_is_sliding(AI_ENTRY_WINDOW(e)))
	{
		/* a count of requests in a calendar window (day holds its code) */
		if (e->daily_count > 0 && ai_window_is_current(AI_ENTRY_WINDOW(e), e->day, cal))
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
	if (AI_ENTRY_IS_RULE(e) && !ai_window_is_sliding(AI_ENTRY_WINDOW(e)))
	{
		/* looked at again at midnight: a week or a month may go on */
		if (e->daily_count > 0 && ai_window_is_current(AI_ENTRY_WINDOW(e), e->day, cal))
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

	LWLockAcquire(ai_partition_lock_at(partition), LW_EXCLUSIVE);
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
	LWLockRelease(ai_partition_lock_at(partition));

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
		AiReservation *r = &ai_resv_slots[i];
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

/*
 * The entry of a holder of counters (a user, or an account: its kind says
 * so), made if need be: ai_entry_get, which may release and take the lock
 * again.
 */
AiEntry *
ai_holder_get(const AiUser *u, TimestampTz now)
{
	AiEntry    *e = ai_entry_get(&u->key, u->hashcode, u->lock, now, u->id, u->len);

	if (e != NULL && u->account)
		e->kind = AI_ENTRY_ACCOUNT;
	return e;
}

/*
 * The entry of a holder, looked up under its partition lock (which the
 * caller holds exclusively, perhaps with others); with create, made
 * without releasing the lock (NULL when the table is full).
 */
AiEntry *
ai_holder_lookup(const AiUser *u, TimestampTz now, bool create)
{
	AiEntry    *e = ai_entry_lookup(&u->key, u->hashcode, create, now, u->id, u->len);

	if (e != NULL && create && u->account)
		e->kind = AI_ENTRY_ACCOUNT;
	return e;
}

/* ---- holders' stamps ---- */

/*
 * A holder's stamp: moves with every record of the holder (change_seq) and
 * with every entry removed from its partition (an entry made again starts
 * its count anew).  Compared, never ordered.  Caller holds the lock.
 */
int64
ai_user_stamp(const AiEntry *holder)
{
	uint32		p = ai_key_hash(&holder->key) % AI_NUM_PARTITIONS;

	return (int64) (((uint64) ai_table->part_epoch[p] << 32) | holder->change_seq);
}

/* Stamps are compared, never ordered: their sums wrap. */
int64
ai_stamp_add(int64 a, int64 b)
{
	return (int64) ((uint64) a + (uint64) b);
}

/*
 * What a cached use of a holder's records is exact at: the holder's stamp
 * and, for a use summed over an account's subtree (tree), the tree it was
 * summed over (both counts only grow, so their sum in the high half moves
 * when either does).
 */
int64
ai_tree_offset(bool tree)
{
	return tree ? (int64) ((uint64) ai_accounts_stamp() << 32) : 0;
}

int64
ai_use_stamp(const AiEntry *holder, bool tree)
{
	return ai_stamp_add(ai_user_stamp(holder), ai_tree_offset(tree));
}

/*
 * A rule's cached use in s is exact by its holder's stamp now: keep that
 * stamp, and whose it is, for a save (ai_use_saves_exact).  Caller holds
 * the lock exclusively.
 */
void
ai_use_keep(AiEntry *s, const AiEntry *holder, bool tree)
{
	s->recorded_total = ai_use_stamp(holder, tree);
	s->use_tree = tree;
	s->use_holder = (int32) (holder - ai_entries);
}

/*
 * Is the use cached in s exact now, with no record in flight, so that the
 * base of a clean shutdown may keep it (persist.c): a user's month of
 * spend, or a rule's use by its holder's stamp?  A rule's holder is found
 * by its slot: a slot that has served another entry since is in another
 * partition, or its partition counted a removal since, which the stamp's
 * high half holds.  Caller holds s's partition lock.
 */
bool
ai_use_saves_exact(const AiEntry *s)
{
	const AiEntry *holder;

	if (s->spend_state != AI_SPEND_VALID || s->inflight != 0 ||
		s->spend_gen != pg_atomic_read_u32(&ai_shared->usage_gen))
		return false;
	if (!AI_ENTRY_IS_RULE(s))
		return true;
	if (s->use_holder < 0 || s->use_holder >= ai_max_keys)
		return false;
	holder = &ai_entries[s->use_holder];
	return !AI_ENTRY_IS_RULE(holder) &&
		ai_key_hash(&holder->key) % AI_NUM_PARTITIONS == ai_key_hash(&s->key) % AI_NUM_PARTITIONS &&
		s->recorded_total == ai_use_stamp(holder, s->use_tree);
}

/*
 * A rule's cached use restored from the base of a clean shutdown (saved.c),
 * before any process has run: it is exact at the stamp its holder has until
 * its first record, restored or made from now on (change_seq 0, the
 * partition's removals so far, the account tree as it starts).  A holder
 * removed meanwhile, or a usage row written for it without an entry
 * (ai_spend_invalidate), moves the partition's count, and the use loads
 * again.
 */
void
ai_use_restored(AiEntry *s, bool tree)
{
	uint32		p = ai_key_hash(&s->key) % AI_NUM_PARTITIONS;

	s->recorded_total = ai_stamp_add((int64) ((uint64) ai_table->part_epoch[p] << 32),
									 ai_tree_offset(tree));
	s->use_tree = tree;
	s->use_holder = -1;
}

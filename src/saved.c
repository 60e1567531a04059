/*-------------------------------------------------------------------------
 *
 * saved.c
 *		Applying saved counters to shared memory: a base or a delta block of
 *		the save files when the server starts (persist.c), a record of the
 *		WAL when a standby or a crash recovery replays it (replica.c).
 *
 * Both readers go through ai_apply_saved, in any layout this library reads
 * (saved.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"

#include "reservations.h"
#include "resvid.h"
#include "saved.h"
#include "shmem.h"
#include "sweep.h"

/*
 * Take the partition lock of a key when replaying WAL; loading in the
 * postmaster takes none (nothing else can touch the table yet).
 */
static LWLock *
ai_apply_lock(const AiKey *key, bool replay)
{
	LWLock	   *lock;

	if (!replay)
		return NULL;
	lock = ai_partition_lock(ai_key_hash(key));
	LWLockAcquire(lock, LW_EXCLUSIVE);
	return lock;
}

static void
ai_apply_unlock(LWLock *lock)
{
	if (lock != NULL)
		LWLockRelease(lock);
}

/*
 * Give an entry the state of a saved one.  Returns false when there is no
 * room for it (max_keys is lower here than where it was saved).
 */
static bool
ai_load_entry(const AiSavedEntry *se, TimestampTz now, AiApplyMode mode, TimestampTz saved_at)
{
	bool		replay = (mode == AI_APPLY_REPLAY);
	uint32		hashcode = ai_key_hash(&se->key);
	LWLock	   *lock = ai_apply_lock(&se->key, replay);
	AiEntry    *e;

	e = replay ? ai_entry_get(&se->key, hashcode, lock, now, se->id_prefix, se->id_len) :
		ai_entry_lookup(&se->key, hashcode, true, now, se->id_prefix, se->id_len);
	if (e == NULL)
	{
		ai_apply_unlock(lock);
		return false;
	}
	/*
	 * A delta replaces the entry's reservations with its own.  On replay,
	 * one issued after the save began copying stays: its check logged it
	 * (replica.c) before this record, which may have copied the entry
	 * before it was made.
	 */
	{
		AiResvIter	it;
		AiReservation *r;
		int32		slot;

		ai_resv_iter_init(&it, e, AI_RESV_WALK_ALL, 0);
		while ((r = ai_resv_iter_next(&it, &slot)) != NULL)
			if (!replay || ai_id_time(r->id < 0 ? -r->id : r->id) < saved_at)
				ai_resv_free(e, slot);
	}
	e->burst_head = se->burst_head;
	e->burst_window_ms = se->burst_window_ms;
	memcpy(e->burst, se->burst, sizeof(e->burst));
	e->day = se->day;
	e->daily_count = se->daily_count;
	e->tokens_head = se->tokens_head;
	memcpy(e->tokens, se->tokens, sizeof(e->tokens));
	e->plan_hash = se->plan_hash;
	e->id_len = se->id_len;
	e->kind = se->kind;
	if (mode == AI_APPLY_WITH_SPEND && se->spend_valid)
	{
		/* the load protocol's state after a load (spend.c) */
		e->spend_state = AI_SPEND_VALID;
		e->spend_month = se->spend_month;
		e->spend_gen = pg_atomic_read_u32(&ai_shared->usage_gen);
		e->committed_spend = se->committed_spend;
		if (AI_ENTRY_IS_RULE(e))
			ai_use_restored(e, se->use_tree);	/* a rule's use, by its holder's stamp */
	}
	if (replay)
		ai_entry_changed(e);	/* for this server's own saves */
	else
		e->save_flags |= AI_SAVE_IN_FILE;	/* dirty too, maybe: the first save is whole */
	ai_apply_unlock(lock);
	return true;
}

/*
 * The counters every layout saved, from an entry of an older layout (its id
 * is as long as it kept; the rest of se is zero).
 */
#define AI_COPY_SAVED_COUNTERS(se, old) \
	do { \
		(se)->key = (old).key; \
		(se)->burst_head = (old).burst_head; \
		(se)->burst_window_ms = (old).burst_window_ms; \
		memcpy((se)->burst, (old).burst, sizeof((se)->burst)); \
		(se)->day = (old).day; \
		(se)->daily_count = (old).daily_count; \
		(se)->tokens_head = (old).tokens_head; \
		memcpy((se)->tokens, (old).tokens, sizeof((se)->tokens)); \
		(se)->plan_hash = (old).plan_hash; \
		(se)->id_len = (old).id_len; \
		memcpy((se)->id_prefix, (old).id_prefix, sizeof((old).id_prefix)); \
	} while (0)

/*
 * The entries, reservations and tombstones read after *hdr, in this
 * build's layout: data itself when it was written in it; otherwise a
 * palloc'd copy, widened (layouts 2 and 3 kept 16 bytes of the id and no
 * spend; layouts 2 to 4 kept no kind, every entry being a user's, and no
 * rule holds with a reservation, which then holds on none), and *hdr then
 * says the current version.
 */
static char *
ai_saved_in_this_layout(AiSaveHeader *hdr, char *data)
{
	Size		entry_len = hdr->version < 4 ? sizeof(AiSavedEntryV3) : sizeof(AiSavedEntryV4);
	const char *old_resv = data + entry_len * (Size) hdr->nentries;
	const char *tomb = old_resv + sizeof(AiSavedResvV4) * (Size) hdr->nresv;
	AiSavedEntry *entries;
	AiSavedResv *resv;

	if (hdr->version >= 5)
		return data;
	entries = palloc_extended(sizeof(AiSavedEntry) * (Size) hdr->nentries +
							  sizeof(AiSavedResv) * (Size) hdr->nresv +
							  sizeof(AiKey) * (Size) hdr->ntomb + 1,
							  MCXT_ALLOC_HUGE | MCXT_ALLOC_ZERO);
	for (uint32 i = 0; i < hdr->nentries; i++)
	{
		AiSavedEntry *se = &entries[i];

		if (hdr->version >= 4)
		{
			AiSavedEntryV4 old;

			memcpy(&old, data + sizeof(AiSavedEntryV4) * (Size) i, sizeof(old));
			AI_COPY_SAVED_COUNTERS(se, old);
			se->spend_valid = old.spend_valid;
			se->spend_month = old.spend_month;
			se->committed_spend = old.committed_spend;
		}
		else
		{
			AiSavedEntryV3 old;

			memcpy(&old, data + sizeof(AiSavedEntryV3) * (Size) i, sizeof(old));
			AI_COPY_SAVED_COUNTERS(se, old);
		}
	}
	resv = (AiSavedResv *) (entries + hdr->nentries);
	for (uint32 i = 0; i < hdr->nresv; i++)
	{
		AiSavedResvV4 r;

		memcpy(&r, old_resv + sizeof(AiSavedResvV4) * (Size) i, sizeof(r));
		resv[i].id = r.id;
		resv[i].key = r.key;
		resv[i].amount = r.amount;
		resv[i].expires_at = r.expires_at;
	}
	memcpy(resv + hdr->nresv, tomb, sizeof(AiKey) * (Size) hdr->ntomb);
	hdr->version = AI_SAVE_VERSION;
	return (char *) entries;
}

/*
 * Apply a base, a delta block or a replayed WAL record (replay: under the
 * partition locks, as standby sessions may read the table): tombstones
 * first (they happened before the block's entries were copied), then
 * entries, then their reservations, under their own ids.  A replayed
 * reservation marks its user, like one restored after a crash: it may have
 * been settled by a record that committed after it was logged
 * (ai_resv_drop_settled looks at the user's first check after promotion).
 * Only AI_APPLY_WITH_SPEND gives entries their saved spend; any other
 * apply leaves it to be loaded from the tables.
 * Returns how many reservations came back.
 */
uint32
ai_apply_saved(const AiSaveHeader *saved_hdr, const char *saved, TimestampTz now,
			   AiApplyMode mode)
{
	bool		replay = (mode == AI_APPLY_REPLAY);
	AiSaveHeader h = *saved_hdr;
	const AiSaveHeader *hdr = &h;
	char	   *data = ai_saved_in_this_layout(&h, unconstify(char *, saved));
	const AiSavedEntry *entries = (const AiSavedEntry *) data;
	const AiSavedResv *resv = (const AiSavedResv *) (entries + hdr->nentries);
	const AiKey *tomb = (const AiKey *) (resv + hdr->nresv);
	uint32		restored = 0;
	uint32		no_room = 0;

	for (uint32 i = 0; i < hdr->ntomb; i++)
	{
		LWLock	   *lock = ai_apply_lock(&tomb[i], replay);
		AiEntry    *e = ai_entry_lookup(&tomb[i], ai_key_hash(&tomb[i]), false, now, NULL, 0);

		if (e != NULL)
			ai_entry_forget(e);
		ai_apply_unlock(lock);
	}
	for (uint32 i = 0; i < hdr->nentries; i++)
		if (!ai_load_entry(&entries[i], now, mode, hdr->written_at))
			no_room++;
	for (uint32 i = 0; i < hdr->nresv; i++)
	{
		LWLock	   *lock;
		AiEntry    *e;
		int32		slot;

		if (resv[i].expires_at <= now)
			continue;
		lock = ai_apply_lock(&resv[i].key, replay);
		e = ai_entry_lookup(&resv[i].key, ai_key_hash(&resv[i].key), false, now, NULL, 0);
		if (e != NULL && ai_resv_restore(e, resv[i].id, resv[i].amount, resv[i].expires_at, &slot))
		{
			AiReservation *r = &ai_resv_slots[slot];

			r->tokens = resv[i].tokens;
			r->all_rules = resv[i].all_rules;
			memcpy(r->rules, resv[i].rules, sizeof(r->rules));
			restored++;
			if (replay)
				ai_entry_set_restored(e, true);
		}
		ai_apply_unlock(lock);
	}
	if (data != saved)
		pfree(data);
	if (no_room > 0)
		ereport(WARNING,
				(errmsg("ai_ratelimit could not keep the counters of %u users: every counter is in use", no_room),
				 errhint("Give this server an ai_ratelimit.max_keys at least as large as the primary's.")));
	return restored;
}

/*-------------------------------------------------------------------------
 *
 * xact.c
 *		What each transaction consumed, and giving it back when the
 *		transaction (or a subtransaction) rolls back.
 *
 * A check changes the shared counters at once, so every other session sees
 * it immediately, and remembers what it took here: the burst bucket, the
 * daily count, the reservation.  If the transaction aborts, those are given
 * back; if it commits, they stay.  ai_record_usage adds its cost to the
 * user's in-flight cost and, at commit, moves it into the month's committed
 * spend.  Charges are undone newest first, and a subtransaction's charges
 * pass to its parent when it commits.
 *
 * Locking: each charge is applied under the partition lock of its key (see
 * shmem.c); nothing here can raise an error while a lock is held.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/memutils.h"

#include "config.h"
#include "replica.h"
#include "reservations.h"
#include "rings.h"
#include "rulestate.h"
#include "shmem.h"
#include "spend.h"
#include "usage.h"
#include "xact.h"

static AiCharge *charges = NULL;
static int	ncharges = 0;
static int	maxcharges = 0;

/*
 * Make room for one more charge.  Called before taking a partition lock, so
 * that recording the charge after the counters changed cannot fail.
 */
void
ai_charge_reserve(void)
{
	ai_charge_reserve_n(1);
}

/* Room for n more charges (a call that charges a user and its accounts). */
void
ai_charge_reserve_n(int n)
{
	if (ncharges + n > maxcharges)
	{
		int			newmax = Max(maxcharges ? maxcharges * 2 : 16, ncharges + n);

		if (charges == NULL)
			charges = MemoryContextAlloc(TopMemoryContext, newmax * sizeof(AiCharge));
		else
			charges = repalloc(charges, newmax * sizeof(AiCharge));
		maxcharges = newmax;
	}
}

/* Remember a charge; ai_charge_reserve() must have been called. */
void
ai_charge_add(const AiCharge *c)
{
	Assert(ncharges < maxcharges);
	charges[ncharges] = *c;
	charges[ncharges].subxid = GetCurrentSubTransactionId();
	ncharges++;
}

/* End one charge: commit keeps it, abort gives it back. */
static void
ai_charge_end(AiCharge *c, bool commit)
{
	uint32		hashcode = ai_key_hash(&c->key);
	LWLock	   *lock = ai_partition_lock(hashcode);
	AiEntry    *e;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(&c->key, hashcode, false, 0, NULL, 0);
	if (e == NULL)
	{
		LWLockRelease(lock);
		return;
	}

	if (c->kind == AI_CHARGE_CHECK)
	{
		if (!commit)
		{
			ai_partition_changed(hashcode);
			ai_burst_give_back(e, c->burst_bucket);
			ai_count_give_back(e, c->day);
			if (c->resv_id != 0 && ai_resv_slots[c->resv_slot].id == c->resv_id)
				ai_resv_free(e, c->resv_slot);
			ai_rules_check_undo(c->rule_first, c->rule_n);
		}
	}
	else
	{
		uint32		seq_before = e->change_seq;

		ai_partition_changed(hashcode);	/* a settled reservation may free it */
		e->inflight--;
		int128_add_int64(&e->inflight_cost, -c->cost);
		e->change_seq++;
		ai_rules_record_end(c->rule_first, c->rule_n, commit, e, seq_before);
		if (!commit)
		{
			ai_tokens_give_back(e, c->token_bucket, c->tokens);
			if (e->spend_month == c->month)
				e->alerts_sent &= ~c->alert_bits;
		}
		if (commit && e->spend_state == AI_SPEND_VALID && e->spend_month == c->month)
			e->committed_spend = ai_money_add(e->committed_spend, c->cost);
		if (c->resv_id != 0)
		{
			AiReservation *r = &ai_resv_slots[c->resv_slot];

			if (r->id == c->resv_id && r->state == AI_RESV_SETTLING)
			{
				if (commit)
					ai_resv_free(e, c->resv_slot);
				else
				{
					r->state = AI_RESV_OPEN;
					e->reserved = ai_money_add(e->reserved, r->amount);
				}
			}
		}
	}
	ai_entry_changed(e);
	LWLockRelease(lock);
}

/*
 * The oldest reservation of user `key` that a check of this transaction
 * made and that is still open: what a record without a reservation id
 * settles (never another request's).  Its slot in *slot; 0 when none.
 * Caller holds the user's partition lock.
 */
int64
ai_xact_own_reservation(const AiKey *key, TimestampTz now, int32 *slot)
{
	for (int i = 0; i < ncharges; i++)
	{
		AiCharge   *c = &charges[i];
		AiReservation *r;

		if (c->kind != AI_CHARGE_CHECK || c->resv_id <= 0 ||
			memcmp(&c->key, key, sizeof(AiKey)) != 0)
			continue;
		r = &ai_resv_slots[c->resv_slot];
		if (r->id == c->resv_id && r->state == AI_RESV_OPEN && r->expires_at > now)
		{
			*slot = c->resv_slot;
			return c->resv_id;
		}
	}
	return 0;
}

static void
ai_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (ncharges > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that called ai_ratelimit functions"),
						 errdetail("A prepared transaction could not give back or settle its limits on rollback.")));
			break;
		case XACT_EVENT_PRE_COMMIT:
			/* its reservations survive what its commit survives (replica.c) */
			ai_wal_resv_flush();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			/* a committed check keeps what it took: nothing to do */
			for (int i = 0; i < ncharges; i++)
				if (charges[i].kind != AI_CHARGE_CHECK)
					ai_charge_end(&charges[i], true);
			/*
			 * Reservations settled by this commit leave standbys too, after
			 * the commit record (never before: a record that did not commit
			 * leaves its reservation held).  Not flushed: one lost to a
			 * crash is dropped by the user's next check (it finds the row).
			 */
			for (int i = 0; i < ncharges; i++)
				if (charges[i].kind == AI_CHARGE_RECORD && charges[i].resv_id > 0)
					ai_wal_log_resv_end(charges[i].resv_id, &charges[i].key);
			ncharges = 0;
			ai_rules_touches_done();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			ai_wal_resv_forget();
			for (int i = ncharges - 1; i >= 0; i--)
				ai_charge_end(&charges[i], false);
			ncharges = 0;
			ai_rules_touches_done();
			break;
		case XACT_EVENT_PREPARE:
			ncharges = 0;
			ai_rules_touches_done();
			break;
		default:
			break;
	}
}

static void
ai_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		int			keep = 0;

		for (int i = ncharges - 1; i >= 0; i--)
			if (charges[i].subxid == mySubid)
				ai_charge_end(&charges[i], false);
		for (int i = 0; i < ncharges; i++)
			if (charges[i].subxid != mySubid)
				charges[keep++] = charges[i];
		ncharges = keep;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (int i = 0; i < ncharges; i++)
			if (charges[i].subxid == mySubid)
				charges[i].subxid = parentSubid;
	}
}

void
ai_xact_init(void)
{
	RegisterXactCallback(ai_xact_callback, NULL);
	RegisterSubXactCallback(ai_subxact_callback, NULL);
}

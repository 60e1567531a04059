/*-------------------------------------------------------------------------
 *
 * limits.c
 *		The decision of a check: burst, then daily, then monthly budget.
 *
 * A check answers from shared memory only.  It holds the user's partition
 * lock (shmem.c) for the whole decision, so the layers are tested and
 * charged as one step: a denied request takes nothing from any layer, and
 * two sessions can never both take the last unit of a limit.
 *
 * The monthly budget needs the month's committed spend.  It is loaded once
 * per user and month from the usage tables (usage.c) and then kept exact in
 * shared memory by ai_record_usage: recorded costs count at once, while
 * their transaction is open, and leave again if it aborts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "ai_ratelimit.h"

extern int	ai_on_full;

/* Human form of a burst window for the article's message. */
static char *
ai_window_words(int32 ms)
{
	if (ms == 1000)
		return pstrdup("second");
	if (ms == 60000)
		return pstrdup("minute");
	if (ms == 3600000)
		return pstrdup("hour");
	if (ms == 86400000)
		return pstrdup("day");
	if (ms % 3600000 == 0)
		return psprintf("%d hours", ms / 3600000);
	if (ms % 60000 == 0)
		return psprintf("%d minutes", ms / 60000);
	if (ms % 1000 == 0)
		return psprintf("%d seconds", ms / 1000);
	return psprintf("%d ms", ms);
}

/*
 * Make sure the entry's spend for the current month is loaded, without
 * missing a concurrent ai_record_usage.  Returns true when the cache is
 * exact; otherwise sets *fallback to a spend that is never lower than the
 * true one, for this check only (the next check tries to load again).
 *
 * The load is exact when no record was in flight and none started or ended
 * while the sum was read: then every recorded cost is committed and visible
 * to the latest snapshot, which is taken after the first look.  Otherwise
 * the fallback adds to the sum whatever was in flight at the first look and
 * whatever was recorded since; a record can be counted twice there, never
 * missed.
 *
 * Caller must hold no partition lock.
 */
bool
ai_ensure_spend(const AiKey *key, uint32 hashcode, const char *user_id, int idlen,
				const AiCalendar *cal, TimestampTz now, AiMoney *fallback)
{
	LWLock	   *lock = ai_partition_lock(hashcode);
	AiEntry    *e;
	uint32		seq;
	uint32		gen = pg_atomic_read_u32(&ai_shared->usage_gen);
	bool		quiet;
	AiMoney		inflight0;
	AiMoney		total0;
	AiMoney		sum;

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_get(key, hashcode, lock, now, user_id, idlen);
	if (e == NULL)
	{
		/* no counter: read the tables, never lower than the truth */
		LWLockRelease(lock);
		*fallback = ai_load_spend(user_id, cal);
		return false;
	}
	if (e->spend_state == AI_SPEND_VALID && e->spend_month == cal->month &&
		e->spend_gen == gen)
	{
		LWLockRelease(lock);
		return true;
	}
	if (e->spend_month != cal->month || e->spend_gen != gen)
	{
		if (e->spend_month != cal->month)
			e->alerts_sent = 0;
		e->spend_state = AI_SPEND_UNKNOWN;
		e->spend_month = cal->month;
		e->committed_spend = 0;
	}
	seq = e->change_seq;
	quiet = (e->inflight == 0);
	inflight0 = e->inflight_cost;
	total0 = e->recorded_total;
	LWLockRelease(lock);

	sum = ai_load_spend(user_id, cal);

	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(key, hashcode, false, now, NULL, 0);
	if (e != NULL && quiet && e->inflight == 0 && e->change_seq == seq &&
		e->spend_month == cal->month && e->spend_state == AI_SPEND_UNKNOWN)
	{
		e->committed_spend = sum;
		e->spend_gen = gen;
		e->spend_state = AI_SPEND_VALID;
		LWLockRelease(lock);
		return true;
	}
	*fallback = ai_money_add(sum, inflight0);
	if (e != NULL)
		*fallback = ai_money_add(*fallback,
								 (AiMoney) ((uint64) e->recorded_total - (uint64) total0));
	LWLockRelease(lock);
	return false;
}

/*
 * Earliest time at which the open reservations that are still there leave
 * room for `need` more under `budget`, given `spend`.  Caller must hold the
 * entry's partition lock.
 */
static TimestampTz
ai_budget_retry_at(AiEntry *e, AiMoney spend, AiMoney need, AiMoney budget,
				   const AiCalendar *cal)
{
	TimestampTz best = cal->month_end;
	int			n = 0;

	if (ai_money_add(spend, need) > budget)
		return cal->month_end;
	for (int32 s = e->resv_head; s >= 0; s = ai_shared->resv[s].next)
	{
		TimestampTz t = ai_shared->resv[s].expires_at;
		AiMoney		later = 0;

		if (++n > 64)
			break;				/* long lists: answer with the month end */
		if (ai_shared->resv[s].state != AI_RESV_OPEN || t >= best)
			continue;
		for (int32 u = e->resv_head; u >= 0; u = ai_shared->resv[u].next)
			if (ai_shared->resv[u].state == AI_RESV_OPEN &&
				ai_shared->resv[u].expires_at > t)
				later = ai_money_add(later, ai_shared->resv[u].amount);
		if (ai_money_add(ai_money_add(spend, later), need) <= budget)
			best = t;
	}
	return best;
}

/*
 * Decide whether user_id may make a request under plan; with consume,
 * charge it when allowed.  Fills *d.
 */
void
ai_decide(const char *user_id, int idlen, const AiPlan *plan,
		  Datum estimate, bool has_estimate, int64 est_tokens,
		  bool consume, AiDecision *d)
{
	TimestampTz now = GetCurrentTimestamp();
	AiCalendar	cal;
	AiKey		key;
	uint32		hashcode;
	LWLock	   *lock;
	AiEntry    *e;
	AiEntry		blank;
	AiMoney		est = 0;
	AiMoney		fallback_spend = 0;
	bool		spend_exact = true;
	bool		made_entry = false;
	AiCharge	charge;
	TimestampTz retry_at = 0;
	bool		retry_never = false;
	int			attempts = 0;

	memset(d, 0, sizeof(*d));
	ai_calendar_at(now, &cal);
	if (has_estimate)
		est = ai_money_from_numeric(estimate, true, "estimated_cost_cents");

	ai_make_key(&key, user_id, idlen);
	hashcode = ai_key_hash(&key);
	lock = ai_partition_lock(hashcode);

	if (consume)
		ai_charge_reserve();

retry:
	if (plan->has_budget)
		spend_exact = ai_ensure_spend(&key, hashcode, user_id, idlen, &cal, now,
									  &fallback_spend);

	LWLockAcquire(lock, LW_EXCLUSIVE);
	if (consume)
	{
		e = ai_entry_get(&key, hashcode, lock, now, user_id, idlen);
		if (e == NULL)
		{
			LWLockRelease(lock);
			pg_atomic_fetch_add_u64(&ai_shared->full_refusals, 1);
			if (ai_on_full == 0)
				ereport(ERROR,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("ai_ratelimit cannot track another user: all %d counters are in use", ai_max_keys),
						 errdetail("Every counter holds a live burst window, daily count or reservation."),
						 errhint("Raise ai_ratelimit.max_keys and restart, or set ai_ratelimit.on_full = 'allow'.")));
			ereport(WARNING,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("ai_ratelimit allowed a request without counting it: all %d counters are in use", ai_max_keys),
					 errhint("Raise ai_ratelimit.max_keys and restart.")));
			d->allowed = true;
			d->reset_at = cal.day_end;
			d->has_reset_at = true;
			return;
		}
	}
	else
		e = ai_entry_lookup(&key, hashcode, false, now, user_id, idlen);
	if (e == NULL)
	{
		/* peek at a user with no counters: all zero */
		memset(&blank, 0, sizeof(blank));
		blank.key = key;
		blank.day = -1;
		blank.spend_month = -1;
		blank.resv_head = blank.resv_tail = -1;
		e = &blank;
	}
	made_entry = (e != &blank);

	/*
	 * The spend loaded above must still be valid under the lock; if the
	 * entry was reclaimed or the month turned meanwhile, load again.
	 */
	if (plan->has_budget && spend_exact &&
		!(e->spend_state == AI_SPEND_VALID && e->spend_month == cal.month))
	{
		LWLockRelease(lock);
		if (++attempts > 5)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not read the monthly spend of user \"%s\" consistently", user_id),
					 errhint("Retry the request.")));
		goto retry;
	}

	if (made_entry && e->plan_hash != plan->name_hash)
		e->plan_hash = plan->name_hash;

	/* a per-user block (ai_user_limits.blocked_until) */
	if (plan->blocked && plan->blocked_until > now)
	{
		d->limited_by = "blocked";
		d->outcome = AI_OUT_BLOCKED;
		if (TIMESTAMP_NOT_FINITE(plan->blocked_until))
		{
			d->error = pstrdup("AI access blocked for this user");
			retry_never = true;
		}
		else
		{
			d->error = psprintf("AI access blocked for this user until %s",
								timestamptz_to_str(plan->blocked_until));
			retry_at = plan->blocked_until;
		}
		goto denied;
	}

	/* burst */
	if (plan->has_burst)
	{
		if (made_entry)
			ai_burst_advance(e, plan->burst_window_ms, now);
		if (plan->burst_limit <= 0 ||
			(e->burst_window_ms == plan->burst_window_ms &&
			 ai_burst_count(e, now) >= (uint32) plan->burst_limit))
		{
			char	   *w = ai_window_words(plan->burst_window_ms);

			d->limited_by = "burst";
			d->outcome = AI_OUT_BURST;
			d->error = psprintf("Rate limit: %d requests/%s on %s plan",
								plan->burst_limit, w, plan->name);
			if (plan->burst_limit <= 0)
				retry_never = true;
			else
				retry_at = ai_burst_retry_at(e, plan->burst_limit, now);
			goto denied;
		}
	}

	/* daily */
	if (plan->has_daily)
	{
		uint32		used = (e->day == cal.day) ? e->daily_count : 0;

		if (used >= (uint32) Max(plan->daily_limit, 0))
		{
			d->limited_by = "daily";
			d->outcome = AI_OUT_DAILY;
			d->error = psprintf("Daily limit: %d AI calls/day on %s plan. Upgrade for more.",
								plan->daily_limit, plan->name);
			if (plan->daily_limit <= 0)
				retry_never = true;
			retry_at = cal.day_end;
			goto denied;
		}
		d->has_remaining = true;
		d->remaining = plan->daily_limit - (int32) used - 1;
	}

	/* tokens per minute: what was recorded in the last minute plus the estimate */
	if (plan->has_tpm)
	{
		uint64		used;

		if (made_entry)
			ai_tokens_advance(e, now);
		used = made_entry ? ai_tokens_count(e, now) : 0;
		if (plan->tokens_per_minute <= 0 ||
			used + (uint64) est_tokens > (uint64) plan->tokens_per_minute ||
			(est_tokens == 0 && used >= (uint64) plan->tokens_per_minute))
		{
			d->limited_by = "tokens";
			d->outcome = AI_OUT_TOKENS;
			d->error = psprintf("Token limit: " INT64_FORMAT " tokens/minute on %s plan",
								plan->tokens_per_minute, plan->name);
			if (plan->tokens_per_minute <= 0 || est_tokens > plan->tokens_per_minute)
				retry_never = true;
			else
				retry_at = ai_tokens_retry_at(e, (uint64) plan->tokens_per_minute,
											  (uint64) Max(est_tokens, 1), now);
			goto denied;
		}
	}

	/* monthly budget */
	if (plan->has_budget)
	{
		AiMoney		spend;
		AiMoney		reserved = made_entry ? ai_resv_open_amount(e, now) : 0;

		if (spend_exact && e->spend_state == AI_SPEND_VALID && e->spend_month == cal.month)
			spend = ai_money_add(e->committed_spend, e->inflight_cost);
		else
			spend = fallback_spend;

		if (ai_money_add(ai_money_add(spend, reserved), est) > plan->budget)
		{
			d->limited_by = "monthly_budget";
			d->outcome = AI_OUT_BUDGET;
			d->error = pstrdup("Monthly AI budget exceeded");
			retry_at = ai_budget_retry_at(e, spend, est, plan->budget, &cal);
			goto denied;
		}
	}

	/* allowed */
	d->allowed = true;
	d->outcome = AI_OUT_ALLOWED;
	d->reset_at = cal.day_end;
	d->has_reset_at = true;
	if (consume)
	{
		memset(&charge, 0, sizeof(charge));
		charge.kind = AI_CHARGE_CHECK;
		charge.key = key;
		charge.burst_bucket = -1;
		charge.day = -1;
		if (plan->has_burst)
		{
			charge.burst_bucket = ai_burst_bucket(e, now);
			e->burst[charge.burst_bucket % AI_BURST_RING]++;
		}
		/* counted under every plan, so a change of plan mid-day is exact */
		if (e->day != cal.day)
		{
			e->day = cal.day;
			e->daily_count = 0;
		}
		e->daily_count++;
		charge.day = cal.day;
		if (est > 0 && plan->has_budget)
		{
			TimestampTz exp = now + (int64) ai_reservation_ttl * USECS_PER_SEC;

			d->reservation_id = ai_resv_create(e, est, exp);
			if (d->reservation_id == 0)
			{
				/* give back what was just taken, then complain */
				if (charge.burst_bucket >= 0)
					e->burst[charge.burst_bucket % AI_BURST_RING]--;
				if (charge.day >= 0)
					e->daily_count--;
				LWLockRelease(lock);
				ereport(ERROR,
						(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
						 errmsg("ai_ratelimit cannot hold another reservation: all %d are in use",
								ai_max_reservations),
						 errhint("Settle reservations with ai_record_usage, or raise ai_ratelimit.max_reservations and restart.")));
			}
			charge.resv_id = d->reservation_id;
		}
		LWLockRelease(lock);
		ai_charge_add(&charge);
		ai_mark_dirty();
		if (plan->stats)
			pg_atomic_fetch_add_u64(&plan->stats->count[AI_OUT_ALLOWED], 1);
		return;
	}
	LWLockRelease(lock);
	return;

denied:
	LWLockRelease(lock);
	if (consume && plan->stats)
		pg_atomic_fetch_add_u64(&plan->stats->count[d->outcome], 1);
	d->allowed = false;
	d->has_remaining = false;
	if (retry_never)
	{
		d->retry_after = -1;
		d->has_reset_at = false;
	}
	else
	{
		d->retry_after = ai_seconds_until(now, retry_at);
		d->reset_at = retry_at;
		d->has_reset_at = true;
	}
}

/*
 * Forget one user's burst and daily counts and open reservations in this
 * database.  Recorded spend stays: it is in the usage tables.
 */
void
ai_reset_user(const char *user_id, int idlen)
{
	AiKey		key;
	uint32		hashcode;
	LWLock	   *lock;
	AiEntry    *e;

	ai_make_key(&key, user_id, idlen);
	hashcode = ai_key_hash(&key);
	lock = ai_partition_lock(hashcode);
	LWLockAcquire(lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(&key, hashcode, false, 0, NULL, 0);
	if (e != NULL)
	{
		int32		slot = e->resv_head;

		memset(e->burst, 0, sizeof(e->burst));
		e->daily_count = 0;
		/* open reservations go; those being settled belong to their record */
		while (slot >= 0)
		{
			int32		next = ai_shared->resv[slot].next;

			if (ai_shared->resv[slot].state == AI_RESV_OPEN)
				ai_resv_free(e, slot);
			slot = next;
		}
		ai_mark_dirty();
	}
	LWLockRelease(lock);
}

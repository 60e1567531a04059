/*-------------------------------------------------------------------------
 *
 * decide.c
 *		The decision of a check, layer by layer: a per-user block, the
 *		burst window, the daily count, tokens per minute, the monthly
 *		budget.
 *
 * A check answers from shared memory only.  It holds the user's partition
 * lock (shmem.c) while the layers are tested and charged, so the layers are
 * one step: a refused request takes nothing from any layer, and two sessions
 * can never both take the last unit of a limit.  Under the lock each layer
 * only compares numbers and, when it refuses, says so with an outcome and a
 * retry time; the messages are built after the lock is released.
 *
 * The monthly budget needs the month's committed spend, which spend.c loads
 * before the lock is taken and keeps exact in the entry.  The rules of
 * ai_rules that apply come last (rulestate.c): their counters are entries
 * of the same partition, tested and charged under the same lock.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/datetime.h"
#include "utils/timestamp.h"

#include "accounts.h"
#include "alerts.h"
#include "calendar.h"
#include "config.h"
#include "decide.h"
#include "replica.h"
#include "reservations.h"
#include "resvid.h"
#include "rings.h"
#include "rulestate.h"
#include "shmem.h"
#include "spend.h"
#include "stats.h"
#include "sweep.h"
#include "xact.h"

/*
 * One account a check charges (a level): the account as the holder of its
 * rules' counters, the rules on it, its entry while the locks are held, and
 * what an allowed check took there.
 */
typedef struct AiLevel
{
	AiUser		acct;
	AiRuleSet	rules;
	AiEntry    *entry;			/* under the locks; NULL: none (a peek) */
	AiCharge	charge;
	bool		alerts;			/* the account has alert thresholds */
} AiLevel;

/* One check in progress: what it was asked and what it found. */
typedef struct AiCheck
{
	const AiUser *user;
	int			nlevels;		/* the accounts it charges (user->chain) */
	AiLevel		levels[AI_MAX_ACCOUNT_DEPTH];
	int			refused_level;	/* the level whose rule refused it, or -1: the user's */
	int			nlocks;			/* the partition locks it takes, ascending */
	LWLock	   *locks[AI_MAX_ACCOUNT_DEPTH + 1];
	const AiPlan *plan;
	const char *model;			/* NULL: the check named none */
	AiRuleSet	rules;			/* the rules of ai_rules that apply */
	bool		rules_deferred; /* their cached use not looked at yet (ai_rules_prepare) */
	const AiRule *refused_by;	/* the rule that refused it */
	bool		consume;		/* charge the request when it is allowed */
	TimestampTz now;
	AiCalendar	cal;
	AiMoney		est;			/* estimated cost, 0 when none */
	int64		est_tokens;
	bool		spend_exact;	/* the entry's cached spend is exact */
	AiMoney		fallback_spend; /* otherwise: never lower than the truth */
	AiEntry    *entry;			/* the user's entry, or &blank */
	bool		live;			/* entry is in shared memory (not &blank) */
	AiEntry		blank;			/* a user with no counters: all zero */
	AiCharge	charge;			/* what an allowed, consuming check took */
	bool		exhausted;		/* a spent budget refused it first in its window: */
	AiAlert		alert;			/* the alert to write (ai_alert_exhausted) */
	AiStanding	standing;		/* the passing limit left with the least room */
} AiCheck;

/* What a layer found, numbers only. */
typedef struct AiVerdict
{
	AiOutcome	outcome;		/* AI_OUT_ALLOWED, or the refusing layer */
	bool		retry_never;	/* no retry can succeed under this plan */
	bool		held_only;		/* budget: only requests in flight stand in the way */
	TimestampTz retry_at;		/* otherwise: the earliest retry that may */
	bool		retryable;		/* a retry can succeed (later in this window or after it) */
	AiFacts		facts;			/* the refusing layer's numbers (none for a block) */
	int32		window_secs;	/* the refusing layer's window */
} AiVerdict;

static bool
ai_refuse(AiVerdict *v, AiOutcome outcome, bool never, TimestampTz retry_at)
{
	v->outcome = outcome;
	v->retry_never = never;
	v->retry_at = retry_at;
	v->retryable = !never;
	return true;
}

/* The numbers behind a refusal, for a program to act on. */
static bool
ai_refuse_with(AiVerdict *v, AiOutcome outcome, bool never, TimestampTz retry_at,
			   int64 limit, int64 used, int64 held, bool money)
{
	v->facts.known = true;
	v->facts.money = money;
	v->facts.limit = limit;
	v->facts.used = used;
	v->facts.held = held;
	return ai_refuse(v, outcome, never, retry_at);
}

/*
 * A layer passed leaving `left` of `limit`: does it leave less room than
 * every layer before it?  Then the caller names it (ai_stand).
 */
static bool
ai_stand_tighter(const AiCheck *c, int64 limit, int64 left)
{
	return limit > 0 &&
		(!c->standing.known ||
		 ai_room_is_less(limit, left, c->standing.limit, c->standing.left));
}

static void
ai_stand(AiCheck *c, const char *layer, int32 rule_id, int unit, int64 limit, int64 left,
		 TimestampTz reset_at, int32 window_secs)
{
	AiStanding *s = &c->standing;

	s->known = true;
	s->layer = layer;
	s->rule_id = rule_id;
	s->unit = unit;
	s->limit = limit;
	s->left = Max(left, 0);
	s->reset_at = reset_at;
	s->at = c->now;
	s->window_secs = window_secs;
}

/* The lengths of the plan's windows now, in seconds. */
static int32
ai_burst_window_secs(const AiPlan *plan)
{
	return (plan->burst_window_ms + 999) / 1000;
}

static int32
ai_day_secs(const AiCalendar *cal)
{
	return ai_seconds_until(cal->day_end - USECS_PER_DAY, cal->day_end);
}

static int32
ai_month_secs(const AiCalendar *cal)
{
	return ai_seconds_until(cal->month_start, cal->month_end);
}

/* A user with no counters: the check reads an all-zero entry of its own. */
static void
ai_check_blank(AiCheck *c)
{
	memset(&c->blank, 0, sizeof(c->blank));
	c->blank.key = c->user->key;
	c->blank.day = -1;
	c->blank.spend_month = -1;
	c->blank.resv_head = c->blank.resv_tail = -1;
	c->entry = &c->blank;
	c->live = false;
}

/*
 * The partition locks of a check: the user's, and those of the accounts it
 * charges, in ascending order (the order of ai_locks), each once.  Every
 * process that holds more than one partition lock takes them in this order,
 * so none waits for a lock held by one that waits for its own: LWLocks
 * have no deadlock detector.
 */
static int
ai_lock_cmp(const void *a, const void *b)
{
	uintptr_t	x = (uintptr_t) *(LWLock *const *) a;
	uintptr_t	y = (uintptr_t) *(LWLock *const *) b;

	return x < y ? -1 : x > y ? 1 : 0;
}

static void
ai_check_locks_init(AiCheck *c)
{
	int			n = 0;

	c->locks[n++] = c->user->lock;
	for (int k = 0; k < c->nlevels; k++)
		c->locks[n++] = c->levels[k].acct.lock;
	qsort(c->locks, n, sizeof(LWLock *), ai_lock_cmp);
	c->nlocks = 0;
	for (int i = 0; i < n; i++)
		if (c->nlocks == 0 || c->locks[c->nlocks - 1] != c->locks[i])
			c->locks[c->nlocks++] = c->locks[i];
}

static void
ai_check_acquire(AiCheck *c)
{
	for (int i = 0; i < c->nlocks; i++)
		LWLockAcquire(c->locks[i], LW_EXCLUSIVE);
}

static void
ai_check_release(AiCheck *c)
{
	for (int i = c->nlocks - 1; i >= 0; i--)
		LWLockRelease(c->locks[i]);
}

/* The rules of every account the check charges, read as the user's are. */
static void
ai_check_prepare_levels(AiCheck *c)
{
	int			touches = c->rules.n;

	for (int k = 0; k < c->nlevels; k++)
	{
		AiLevel    *lv = &c->levels[k];

		int32		pct[AI_MAX_ALERTS];

		ai_rules_prepare(&lv->rules, &lv->acct, NULL, c->model, c->now, c->consume, false);
		touches += lv->rules.n;
		lv->alerts = c->consume && ai_account_alert_percents(lv->acct.id, pct) > 0;
	}
	ai_rules_reserve_touches(touches);
}

/*
 * Under the locks: the entry of every account the check charges (made when
 * consuming), and whether the use of its rules found cached is still so.
 * False when it is not; *full when a consuming check found no room.
 */
static bool
ai_check_levels_exact(AiCheck *c, bool *full)
{
	*full = false;
	for (int k = 0; k < c->nlevels; k++)
	{
		AiLevel    *lv = &c->levels[k];

		lv->entry = ai_holder_lookup(&lv->acct, c->now, c->consume);
		if (lv->entry == NULL && c->consume)
		{
			*full = true;
			return false;
		}
		if (!ai_rules_still_exact(&lv->rules, lv->entry))
			return false;
	}
	return true;
}

/*
 * Load the spend when the plan has a budget, then take the partition lock
 * and find the user's entry: made when consuming, looked up when peeking (a
 * user with no entry reads as the blank one; a peek makes no entry, and
 * so never takes a counter from another user).  Returns true with the lock
 * held; false, with the lock released, when a consuming check meets a full
 * hash.
 */
static bool
ai_check_lock_entry(AiCheck *c)
{
	const AiPlan *plan = c->plan;
	int			spare = c->rules_deferred ? 1 : 0;

	for (int attempt = 1;; attempt++)
	{
		bool		full = false;

		if (plan->has_budget)
			c->spend_exact = ai_ensure_spend(c->user, &c->cal, c->now, c->consume,
											 &c->fallback_spend);
		if (attempt > 1)
		{
			ai_rules_prepare(&c->rules, c->user, plan->name, c->model, c->now, c->consume, false);
			ai_check_prepare_levels(c);
			c->rules_deferred = false;
		}
		if (c->consume && c->nlevels > 0)
		{
			/* made under its lock alone: making room may release it */
			LWLockAcquire(c->user->lock, LW_EXCLUSIVE);
			(void) ai_entry_get(&c->user->key, c->user->hashcode, c->user->lock, c->now,
								c->user->id, c->user->len);
			LWLockRelease(c->user->lock);
		}
		ai_check_acquire(c);
		if (c->consume && c->nlevels == 0)
			c->entry = ai_entry_get(&c->user->key, c->user->hashcode, c->user->lock, c->now,
									c->user->id, c->user->len);
		else
			c->entry = ai_entry_lookup(&c->user->key, c->user->hashcode, c->consume, c->now,
									   c->user->id, c->user->len);
		if (c->entry == NULL && c->consume)
		{
			ai_check_release(c);
			return false;
		}
		c->live = (c->entry != NULL);
		if (!c->live)
			ai_check_blank(c);
		else if (c->entry->resv_restored && c->consume)
		{
			/* after a crash: drop what was settled since the last save */
			ai_check_release(c);
			ai_resv_drop_settled(c->user);
			continue;
		}

		/*
		 * The spend loaded above, and the rules' use, must still be cached
		 * under the lock; if an entry was reclaimed or the month turned
		 * meanwhile, load again.
		 */
		if ((!plan->has_budget || !c->spend_exact ||
			 ai_spend_is_cached(c->entry, c->cal.month)) &&
			ai_rules_still_exact(&c->rules, c->live ? c->entry : NULL) &&
			ai_check_levels_exact(c, &full))
			break;
		ai_check_release(c);
		if (full)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("ai_ratelimit cannot count the accounts of another check: all %d counters are in use", ai_max_keys),
					 errdetail("Each account a check charges takes a counter of its own."),
					 errhint("Raise ai_ratelimit.max_keys and restart.")));
		/* a first look that deferred the rules' use counts no attempt */
		if (attempt > 5 + spare)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not read the spend of user \"%s\" consistently",
							c->user->id),
					 errdetail("Its monthly spend or the use of its rules changed five times while it was read."),
					 errhint("Retry the request.")));
	}
	if (c->live && c->consume && c->entry->plan_hash != plan->name_hash)
		c->entry->plan_hash = plan->name_hash;
	return true;
}

/* ---- the layers: caller holds the partition lock ---- */

/* A per-user block (ai_user_limits.blocked_until). */
static bool
ai_refused_by_block(const AiCheck *c, AiVerdict *v)
{
	const AiPlan *plan = c->plan;

	if (!plan->blocked || plan->blocked_until <= c->now)
		return false;
	(void) ai_refuse(v, AI_OUT_BLOCKED, TIMESTAMP_NOT_FINITE(plan->blocked_until),
					 plan->blocked_until);
	/* a block is an operator's decision: no retry is worth making */
	v->retryable = false;
	return true;
}

static bool
ai_refused_by_burst(AiCheck *c, AiVerdict *v)
{
	const AiPlan *plan = c->plan;
	uint32		used;

	if (!plan->has_burst)
		return false;
	if (c->live)
		ai_burst_advance(c->entry, plan->burst_window_ms, c->now);
	if (plan->burst_limit <= 0)
		return ai_refuse_with(v, AI_OUT_BURST, true, 0, 0, 0, 0, false);
	if (c->entry->burst_window_ms != plan->burst_window_ms)
		return false;
	used = ai_burst_count(c->entry, c->now);
	if (used >= (uint32) plan->burst_limit)
	{
		v->window_secs = ai_burst_window_secs(plan);
		return ai_refuse_with(v, AI_OUT_BURST, false,
							  ai_burst_retry_at(c->entry, plan->burst_limit, c->now),
							  plan->burst_limit, used, 0, false);
	}
	if (ai_stand_tighter(c, plan->burst_limit, plan->burst_limit - used - 1))
		ai_stand(c, ai_outcome_name(AI_OUT_BURST), 0, AI_METRIC_REQUESTS, plan->burst_limit,
				 plan->burst_limit - used - 1,
				 used > 0 ? ai_burst_oldest_leaves(c->entry, c->now) :
				 c->now + (TimestampTz) plan->burst_window_ms * 1000,
				 ai_burst_window_secs(plan));
	return false;
}

/* Sets the decision's remaining count when the request fits. */
static bool
ai_refused_by_daily(AiCheck *c, AiVerdict *v, AiDecision *d)
{
	const AiPlan *plan = c->plan;
	uint32		used;

	if (!plan->has_daily)
		return false;
	used = (c->entry->day == c->cal.day) ? c->entry->daily_count : 0;
	if (used >= (uint32) Max(plan->daily_limit, 0))
	{
		v->window_secs = ai_day_secs(&c->cal);
		return ai_refuse_with(v, AI_OUT_DAILY, plan->daily_limit <= 0, c->cal.day_end,
							  Max(plan->daily_limit, 0), used, 0, false);
	}
	d->has_remaining = true;
	d->remaining = plan->daily_limit - (int32) used - 1;
	if (ai_stand_tighter(c, plan->daily_limit, d->remaining))
		ai_stand(c, ai_outcome_name(AI_OUT_DAILY), 0, AI_METRIC_REQUESTS, plan->daily_limit,
				 d->remaining, c->cal.day_end, ai_day_secs(&c->cal));
	return false;
}

/* What was recorded in the last minute, plus the estimate. */
static bool
ai_refused_by_tokens(AiCheck *c, AiVerdict *v)
{
	const AiPlan *plan = c->plan;
	uint64		limit = (uint64) Max(plan->tokens_per_minute, 0);
	uint64		used = 0;

	if (!plan->has_tpm)
		return false;
	if (c->live)
	{
		ai_tokens_advance(c->entry, c->now);
		used = ai_tokens_count(c->entry, c->now);
	}
	if (limit > 0 && used + (uint64) c->est_tokens <= limit &&
		!(c->est_tokens == 0 && used >= limit))
	{
		int64		left = (int64) (limit - used - (uint64) c->est_tokens);

		if (ai_stand_tighter(c, (int64) limit, left))
			ai_stand(c, ai_outcome_name(AI_OUT_TOKENS), 0, AI_METRIC_TOKENS, (int64) limit, left,
					 used > 0 ? ai_tokens_oldest_leave(c->entry, c->now) :
					 c->now + 60 * USECS_PER_SEC, 60);
		return false;
	}
	v->window_secs = 60;
	if (limit == 0 || (uint64) c->est_tokens > limit)
		return ai_refuse_with(v, AI_OUT_TOKENS, true, 0, (int64) limit, (int64) used, 0, false);
	return ai_refuse_with(v, AI_OUT_TOKENS, false,
						  ai_tokens_retry_at(c->entry, limit,
											 (uint64) Max(c->est_tokens, 1), c->now),
						  (int64) limit, (int64) used, 0, false);
}

/*
 * When only open reservations stand in the way, a retry is worth making
 * this soon: requests in flight usually settle within seconds, for less
 * than they reserved.
 */
#define AI_INFLIGHT_RETRY_SECS	5

/*
 * When a retry can succeed, given `spend` and the user's open reservations:
 * the end of the month when the spend alone leaves no room for `need`;
 * otherwise the earliest expiry of reservations that leaves room, but no
 * later than AI_INFLIGHT_RETRY_SECS from now, since reservations are
 * usually settled long before they expire.
 */
static TimestampTz
ai_budget_retry_at(AiEntry *e, AiMoney spend, AiMoney need, AiMoney budget,
				   const AiCalendar *cal, TimestampTz now)
{
	TimestampTz soon = now + AI_INFLIGHT_RETRY_SECS * USECS_PER_SEC;
	TimestampTz best = cal->month_end;
	int			n = 0;
	AiResvIter	it;
	AiReservation *r;

	if (ai_money_add(spend, need) > budget)
		return cal->month_end;
	ai_resv_iter_init(&it, e, AI_RESV_WALK_HOLDING, now);
	while ((r = ai_resv_iter_next(&it, NULL)) != NULL)
	{
		TimestampTz t = r->expires_at;
		AiMoney		later;

		if (++n > 64)
			break;				/* long lists: answer with the month end */
		if (t >= best)
			continue;
		/* what the others still hold once this one has expired */
		later = ai_resv_held(e, t, NULL);
		if (ai_money_add(ai_money_add(spend, later), need) <= budget)
			best = t;
	}
	return Min(best, soon);
}

/*
 * A spent budget refused a consuming check: the first time in the budget's
 * window (its exhausted bit in *sent, under the lock), the 100% alert of
 * the budget is to be written once the locks are released.
 */
static bool
ai_exhausted_first(AiCheck *c, uint32 *sent, AiAlertKind kind, const char *owner,
				   AiMoney spend, AiMoney budget)
{
	if ((*sent & AI_ALERT_EXHAUSTED_BIT) != 0)
		return false;
	*sent |= AI_ALERT_EXHAUSTED_BIT;
	c->exhausted = true;
	ai_alert_init(&c->alert, kind, c->user->id, c->user->len, owner, 100, spend, budget);
	c->alert.exhausted = true;
	return true;
}

/* Spend this month, open reservations and the estimate, against the budget. */
static bool
ai_refused_by_budget(AiCheck *c, AiVerdict *v)
{
	const AiPlan *plan = c->plan;
	AiEntry    *e = c->entry;
	AiMoney		spend;
	AiMoney		reserved;
	AiMoney		total;

	if (!plan->has_budget)
		return false;
	reserved = c->live ? ai_resv_open_amount(e, c->now) : 0;
	if (c->spend_exact && ai_spend_is_cached(e, c->cal.month))
		spend = ai_money_add(e->committed_spend, ai_inflight_cost(e));
	else
		spend = c->fallback_spend;
	total = ai_money_add(ai_money_add(spend, reserved), c->est);
	if (plan->budget > 0 && total <= plan->budget)
	{
		if (ai_stand_tighter(c, plan->budget, plan->budget - total))
			ai_stand(c, ai_outcome_name(AI_OUT_BUDGET), 0, AI_METRIC_CENTS, plan->budget,
					 plan->budget - total, c->cal.month_end, ai_month_secs(&c->cal));
		return false;
	}
	v->window_secs = ai_month_secs(&c->cal);
	/* a budget of 0 cuts the user off, with or without an estimate */
	if (plan->budget <= 0)
		return ai_refuse_with(v, AI_OUT_BUDGET, true, 0, 0, spend, reserved, true);
	v->held_only = reserved > 0 && ai_money_add(spend, c->est) <= plan->budget;
	(void) ai_refuse_with(v, AI_OUT_BUDGET, false,
						  ai_budget_retry_at(e, spend, c->est, plan->budget, &c->cal, c->now),
						  plan->budget, spend, reserved, true);
	/* retry soon only when requests in flight hold the room; spent is spent */
	v->retryable = v->held_only;
	if (!v->held_only && plan->nalerts > 0 && c->live && c->consume &&
		ai_spend_is_cached(e, c->cal.month) &&
		ai_exhausted_first(c, &e->alerts_sent, AI_ALERT_PLAN, plan->name, spend, plan->budget))
		c->alert.month = c->cal.month_start_date;
	return true;
}

/*
 * A refusal by rule r (rr: what ai_rules_refuse found), named by its level:
 * an account's rule or a member rule say so (limited_by, and the stats).
 * A budget (a cents rule over a calendar day, week or month, at any level)
 * means what the plan's monthly budget means: spent is spent until the
 * window ends, so only the room held by requests in flight is worth a
 * retry.  Rules over a minute or an hour, and counts of requests or
 * tokens, stay retryable with their Retry-After.
 */
static bool
ai_refuse_by_rule(AiCheck *c, AiVerdict *v, const AiLevel *lv, const AiRuleUse *ru,
				  const AiRuleRefusal *rr)
{
	const AiRule *r = ru->rule;
	AiOutcome	outcome = r->scope == AI_SCOPE_ACCOUNT ? AI_OUT_ACCOUNT :
		r->scope == AI_SCOPE_MEMBER ? AI_OUT_MEMBER : AI_OUT_RULE;

	c->refused_by = r;
	v->window_secs = ai_window_secs(&ru->win);
	(void) ai_refuse_with(v, outcome, rr->never, rr->retry_at, rr->limit, rr->used, rr->held,
						  r->metric == AI_METRIC_CENTS);
	v->held_only = rr->held_only;
	if (ai_rule_is_budget(r))
		v->retryable = !rr->never && v->held_only;
	if (!v->held_only && lv != NULL && lv->alerts && r->scope == AI_SCOPE_ACCOUNT &&
		rr->entry != NULL &&
		ai_exhausted_first(c, &rr->entry->alerts_sent, AI_ALERT_ACCOUNT, r->scope_id,
						   rr->used, r->max))
	{
		c->alert.rule_id = r->id;
		c->alert.window_start = rr->window_start;
	}
	return true;
}

/* The rule of a set that passed with the least room, if it has less. */
static void
ai_stand_rule(AiCheck *c, const AiRuleSet *rs, const AiRuleRoom *room)
{
	const AiRuleUse *ru;

	if (room->index < 0 || !ai_stand_tighter(c, room->limit, room->left))
		return;
	ru = &rs->use[room->index];
	ai_stand(c, NULL, ru->rule->id, ru->rule->metric, room->limit, room->left,
			 ru->win.end, ai_window_secs(&ru->win));
}

/*
 * Every rule of ai_rules that applies, after the plan's own limits; user is
 * the user's entry, or NULL.
 */
static bool
ai_refused_by_rules(AiCheck *c, AiEntry *user, AiVerdict *v)
{
	AiRuleRefusal rr;
	AiRuleRoom	room;

	if (c->rules.n == 0)
		return false;
	if (ai_rules_refuse(&c->rules, user, c->est, c->est_tokens, c->now, &rr, &room))
		return ai_refuse_by_rule(c, v, NULL, &c->rules.use[rr.index], &rr);
	ai_stand_rule(c, &c->rules, &room);
	return false;
}

/*
 * The rules on every account the check charges, after the user's own: all
 * must pass.  A refusal names the level (c->refused_level).
 */
static bool
ai_refused_by_accounts(AiCheck *c, AiVerdict *v)
{
	for (int k = 0; k < c->nlevels; k++)
	{
		AiLevel    *lv = &c->levels[k];
		AiRuleRefusal rr;

		AiRuleRoom	room;

		if (lv->rules.n == 0)
			continue;
		if (!ai_rules_refuse(&lv->rules, lv->entry, c->est, c->est_tokens, c->now, &rr, &room))
		{
			ai_stand_rule(c, &lv->rules, &room);
			continue;
		}
		c->refused_level = k;
		return ai_refuse_by_rule(c, v, lv, &lv->rules.use[rr.index], &rr);
	}
	return false;
}

/*
 * Does an allowed check hold its estimate in a reservation?  A check that
 * charges accounts holds any estimate: a rule on an account may come while
 * it is in flight (ai_rules.revision), and must find it held there.
 */
static bool
ai_check_reserves(const AiCheck *c)
{
	return (c->est > 0 && (c->plan->has_budget || c->rules.money || c->nlevels > 0)) ||
		(c->est_tokens > 0 && (c->rules.tokens || c->nlevels > 0));
}

/* Make the counters of every level an allowed check will charge. */
static bool
ai_levels_make_room(AiCheck *c)
{
	for (int k = 0; k < c->nlevels; k++)
		if (!ai_rules_make_room(&c->levels[k].rules, &c->levels[k].acct, c->now))
			return false;
	return true;
}

/*
 * Charge every level of an allowed check: a shadow of its reservation in
 * each account (the estimate held there until it settles, is released,
 * rolls back or expires), and the requests rules on each account.  False,
 * with nothing taken at any level, when the pool has no slot for a shadow.
 * Caller holds every lock of the check.
 */
static bool
ai_take_levels(AiCheck *c)
{
	AiCharge   *charge = &c->charge;

	for (int k = 0; k < c->nlevels; k++)
	{
		AiLevel    *lv = &c->levels[k];
		AiCharge   *lc = &lv->charge;

		memset(lc, 0, sizeof(*lc));
		lc->kind = AI_CHARGE_CHECK;
		lc->key = lv->acct.key;
		lc->burst_bucket = -1;
		lc->day = -1;
		if (charge->resv_id > 0)
		{
			if (!ai_resv_shadow(lv->entry, charge->resv_slot, &lc->resv_slot))
			{
				/* give back the shadows made so far */
				for (int j = 0; j < k; j++)
					ai_resv_free(c->levels[j].entry, c->levels[j].charge.resv_slot);
				return false;
			}
			lc->resv_id = -charge->resv_id;
		}
	}
	/* the reservation names the accounts it is held on, nearest first */
	if (charge->resv_id > 0)
	{
		int32	   *link = &ai_resv_slots[charge->resv_slot].shadow;

		for (int k = 0; k < c->nlevels; k++)
		{
			*link = c->levels[k].charge.resv_slot;
			link = &ai_resv_slots[c->levels[k].charge.resv_slot].shadow;
		}
		*link = -1;
	}
	for (int k = 0; k < c->nlevels; k++)
	{
		AiLevel    *lv = &c->levels[k];

		ai_rules_charge(&lv->rules, lv->entry, c->now, &lv->charge.rule_first,
						&lv->charge.rule_n);
		ai_entry_changed(lv->entry);
	}
	return true;
}

/* What ai_take_charge did. */
typedef enum AiTaken
{
	AI_TAKEN,					/* charged */
	AI_TAKEN_POOL_FULL,			/* nothing taken: no reservation slot is free */
	AI_TAKEN_NEED_IDS			/* nothing taken: the id ceiling must be raised */
} AiTaken;

/*
 * Charge an allowed request: a burst place, the day's count (under every
 * plan, so a change of plan mid-day is exact) and, with an estimate and a
 * budget, a reservation.  Fills c->charge and the decision's reservation
 * id.  Takes nothing when no reservation can be made.  Caller holds the
 * partition lock.
 */
static AiTaken
ai_take_charge(AiCheck *c, AiDecision *d)
{
	AiEntry    *e = c->entry;
	AiCharge   *charge = &c->charge;

	memset(charge, 0, sizeof(*charge));
	charge->kind = AI_CHARGE_CHECK;
	charge->key = c->user->key;
	charge->burst_bucket = -1;
	charge->day = c->cal.day;
	if (ai_check_reserves(c))
	{
		TimestampTz expires = c->now + (int64) ai_reservation_ttl * USECS_PER_SEC;

		int64		id = ai_resv_create(e, c->est, c->now, expires, &charge->resv_slot);

		if (id == 0)
			return AI_TAKEN_POOL_FULL;
		if (id == AI_ID_NEED_CEILING)
			return AI_TAKEN_NEED_IDS;
		d->reservation_id = charge->resv_id = id;
		ai_rules_hold(&c->rules, &ai_resv_slots[charge->resv_slot], c->est_tokens);
		for (int k = 0; k < c->nlevels; k++)
			ai_rules_hold_more(&c->levels[k].rules, &ai_resv_slots[charge->resv_slot],
							   c->est_tokens);
	}
	if (!ai_take_levels(c))
	{
		if (charge->resv_id > 0)
			ai_resv_free(e, charge->resv_slot);
		d->reservation_id = 0;
		return AI_TAKEN_POOL_FULL;
	}
	if (charge->resv_id > 0)
	{
		/* in the WAL before any save can copy it; flushed at commit (replica.c) */
		const AiUser *accts[AI_MAX_ACCOUNT_DEPTH];

		for (int k = 0; k < c->nlevels; k++)
			accts[k] = &c->levels[k].acct;
		ai_wal_log_resv(&ai_resv_slots[charge->resv_slot], c->user, accts, c->nlevels);
	}
	ai_rules_charge(&c->rules, e, c->now, &charge->rule_first, &charge->rule_n);
	if (c->plan->has_burst)
		charge->burst_bucket = ai_burst_take(e);
	ai_count_take(e, c->cal.day);
	ai_entry_changed(e);
	return AI_TAKEN;
}

/* ---- after the lock ---- */

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
 * A time as a person reads it: to the second, rounded up (a block that ends
 * at 11:18:01.26 is still in force at 11:18:01), in ai_ratelimit.timezone,
 * with the zone's abbreviation.  reset_at keeps the exact value.
 */
static char *
ai_local_time_words(TimestampTz t)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			tz;
	const char *tzn = NULL;
	int64		part = t % USECS_PER_SEC;

	if (part != 0)
		t += (part > 0 ? USECS_PER_SEC : 0) - part;
	if (timestamp2tm(t, &tz, &tm, &fsec, &tzn, ai_timezone) != 0)
		return pstrdup(timestamptz_to_str(t));
	return psprintf("%04d-%02d-%02d %02d:%02d:%02d%s%s",
					tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
					tzn ? " " : "", tzn ? tzn : "");
}

/* The message of a refusal, in the article's words. */
static char *
ai_refusal_message(const AiVerdict *v, const AiPlan *plan, const AiRule *rule)
{
	switch (v->outcome)
	{
		case AI_OUT_BLOCKED:
			if (TIMESTAMP_NOT_FINITE(plan->blocked_until))
				return pstrdup("AI access blocked for this user");
			return psprintf("AI access blocked for this user until %s",
							ai_local_time_words(plan->blocked_until));
		case AI_OUT_BURST:
			return psprintf("Rate limit: %d requests/%s on %s plan",
							plan->burst_limit,
							ai_window_words(plan->burst_window_ms), plan->name);
		case AI_OUT_DAILY:
			return psprintf("Daily limit: %d AI calls/day on %s plan. Upgrade for more.",
							plan->daily_limit, plan->name);
		case AI_OUT_TOKENS:
			return psprintf("Token limit: " INT64_FORMAT " tokens/minute on %s plan",
							plan->tokens_per_minute, plan->name);
		case AI_OUT_BUDGET:
			/* what was recorded fits: say it is held, not exceeded */
			if (v->held_only)
				return pstrdup("Monthly AI budget held by requests in flight");
			return pstrdup("Monthly AI budget exceeded");
		case AI_OUT_RULE:
		case AI_OUT_ACCOUNT:
		case AI_OUT_MEMBER:
			if (v->held_only && rule->scope == AI_SCOPE_ACCOUNT)
				return psprintf("Limit: %s for account %s held by requests in flight (rule %d)",
								ai_rule_words(rule), rule->scope_id, rule->id);
			if (v->held_only && rule->scope == AI_SCOPE_MEMBER)
				return psprintf("Limit: %s for this user in account %s held by requests in flight (rule %d)",
								ai_rule_words(rule), rule->scope_id, rule->id);
			if (v->held_only)
				return psprintf("Limit: %s held by requests in flight (rule %d)",
								ai_rule_words(rule), rule->id);
			if (rule->scope == AI_SCOPE_ACCOUNT)
				return psprintf("Limit: %s for account %s (rule %d)",
								ai_rule_words(rule), rule->scope_id, rule->id);
			if (rule->scope == AI_SCOPE_MEMBER)
				return psprintf("Limit: %s for this user in account %s (rule %d)",
								ai_rule_words(rule), rule->scope_id, rule->id);
			if (rule->scope == AI_SCOPE_USER)
				return psprintf("Limit: %s for this user (rule %d)",
								ai_rule_words(rule), rule->id);
			return psprintf("Limit: %s on %s plan (rule %d)",
							ai_rule_words(rule), plan->name, rule->id);
		default:
			return NULL;
	}
}

static bool ai_check_reserves(const AiCheck *c);

/*
 * A consuming check met a full table: ai_ratelimit.on_full decides.  With
 * refuse, an error.  With allow, the user is checked without counters: a
 * block and the monthly budget (spend from the tables) still refuse; burst,
 * daily and tokens per minute cannot be counted.  A check that would hold
 * an estimate is an error under both: an untracked user has nowhere to hold
 * it, and letting the call through unheld would let requests in flight
 * together pass a budget.  Fills *v.
 */
static void
ai_check_untracked(AiCheck *c, AiVerdict *v)
{
	pg_atomic_fetch_add_u64(&ai_shared->full_refusals, 1);
	if (ai_on_full == AI_ON_FULL_REFUSE)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("ai_ratelimit cannot track another user: all %d counters are in use", ai_max_keys),
				 errdetail("Every counter holds a live burst window, daily count or reservation."),
				 errhint("Raise ai_ratelimit.max_keys and restart, or set ai_ratelimit.on_full = 'allow'.")));
	if (ai_check_reserves(c))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("ai_ratelimit cannot hold the estimate of another user: all %d counters are in use", ai_max_keys),
				 errdetail("ai_ratelimit.on_full = 'allow' admits an untracked user only when its check holds no estimate; this one would hold one for a budget."),
				 errhint("Raise ai_ratelimit.max_keys and restart.")));
	ai_check_blank(c);
	if (ai_refused_by_block(c, v) || ai_refused_by_budget(c, v))
		return;
	/*
	 * The rules' use, read as a peek reads it (nothing is made): refused or
	 * not, nothing is counted.  A use found cached must still be so under
	 * the lock.
	 */
	for (int attempt = 1;; attempt++)
	{
		AiEntry    *ue;
		bool		refused = false;
		bool		exact;

		bool		full;

		c->consume = false;		/* nothing is made or counted */
		ai_rules_prepare(&c->rules, c->user, c->plan->name, c->model, c->now, false, false);
		ai_check_prepare_levels(c);
		ai_check_acquire(c);
		ue = ai_entry_lookup(&c->user->key, c->user->hashcode, false, c->now, NULL, 0);
		exact = ai_rules_still_exact(&c->rules, ue) && ai_check_levels_exact(c, &full);
		if (exact)
			refused = ai_refused_by_rules(c, ue, v) || ai_refused_by_accounts(c, v);
		ai_check_release(c);
		if (refused)
			return;
		if (exact)
			break;
		if (attempt >= 5)
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not read the spend of user \"%s\" consistently", c->user->id),
					 errdetail("The use of its rules changed five times while it was read."),
					 errhint("Retry the request.")));
	}
	ereport(WARNING,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg("ai_ratelimit allowed a request without counting it: all %d counters are in use", ai_max_keys),
			 errdetail("Blocks, the monthly budget and the rules of ai_rules were checked against what is recorded, and no estimate is held; burst, daily and token limits were not checked, and requests were not counted under rules."),
			 errhint("Raise ai_ratelimit.max_keys and restart.")));
}

/*
 * Decide whether user u may make a request under plan; with consume,
 * charge it when allowed.  Fills *d.
 */
void
ai_decide(const AiUser *u, const AiPlan *plan, const char *model,
		  AiMoney estimate, bool has_estimate, int64 est_tokens,
		  bool consume, AiDecision *d)
{
	AiCheck		c;
	AiVerdict	v;
	bool		locked;
	bool		charged = false;
	AiTaken		taken;

	memset(&c, 0, sizeof(c));
	c.user = u;
	c.plan = plan;
	c.model = model;
	c.consume = consume;
	c.now = GetCurrentTimestamp();
	ai_calendar_at(c.now, &c.cal);
	if (has_estimate)
		c.est = estimate;
	c.est_tokens = est_tokens;
	c.spend_exact = true;
	c.refused_level = -1;
	c.nlevels = Min(u->nchain, AI_MAX_ACCOUNT_DEPTH);
	for (int k = 0; k < c.nlevels; k++)
		ai_account_init(&c.levels[k].acct, u->chain[k], strlen(u->chain[k]));
	ai_check_locks_init(&c);
	if (consume)
		ai_charge_reserve_n(1 + c.nlevels);
	/*
	 * The rules that apply, and what they need from the tables.  A check
	 * takes the cached use of its calendar rules as exact, and reads the
	 * tables only when the lock shows it is not (ai_check_lock_entry): most
	 * checks find it cached, and pay no look before the lock for it.
	 */
	ai_rules_prepare(&c.rules, u, plan->name, model, c.now, consume, consume);
	c.rules_deferred = consume;
	ai_check_prepare_levels(&c);
	/* an id must be promised durably before it is issued (resvid.c) */
	if (consume && ai_check_reserves(&c))
		ai_ids_ensure(c.now, AI_IDS_CHECK);

again:
	memset(d, 0, sizeof(*d));
	memset(&v, 0, sizeof(v));
	v.outcome = AI_OUT_ALLOWED;
	c.standing.known = false;
	locked = ai_check_lock_entry(&c);
	if (!locked)
		ai_check_untracked(&c, &v);
	else if (!ai_refused_by_block(&c, &v) &&
			 !ai_refused_by_burst(&c, &v) &&
			 !ai_refused_by_daily(&c, &v, d) &&
			 !ai_refused_by_tokens(&c, &v) &&
			 !ai_refused_by_budget(&c, &v) &&
			 !ai_refused_by_rules(&c, c.live ? c.entry : NULL, &v) &&
			 !ai_refused_by_accounts(&c, &v) &&
			 consume)
	{
		if (!ai_rules_make_room(&c.rules, c.user, c.now) || !ai_levels_make_room(&c))
		{
			ai_check_release(&c);
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("ai_ratelimit cannot count the rules of another user: all %d counters are in use", ai_max_keys),
					 errdetail("Each rule of ai_rules that applies to a user takes a counter of its own."),
					 errhint("Raise ai_ratelimit.max_keys and restart.")));
		}
		taken = ai_take_charge(&c, d);
		charged = (taken == AI_TAKEN);
		if (taken == AI_TAKEN_NEED_IDS)
		{
			/* nothing was taken: raise the ceiling and decide again */
			ai_check_release(&c);
			ai_ids_ensure(c.now, AI_IDS_FORCE);
			goto again;
		}
		if (taken == AI_TAKEN_POOL_FULL)
		{
			ai_check_release(&c);
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
					 errmsg("ai_ratelimit cannot hold another reservation: all %d are in use",
							ai_max_reservations),
					 errhint("Settle reservations with ai_record_usage or give them back with ai_release_reservation, or raise ai_ratelimit.max_reservations and restart.")));
		}
	}
	if (locked)
		ai_check_release(&c);
	if (c.exhausted)
		ai_alert_exhausted(&c.alert);

	if (charged)
	{
		ai_charge_add(&c.charge);
		for (int k = 0; k < c.nlevels; k++)
			ai_charge_add(&c.levels[k].charge);
	}
	if (consume && plan->stats)
		pg_atomic_fetch_add_u64(&plan->stats->count[v.outcome], 1);

	d->outcome = v.outcome;
	d->allowed = (v.outcome == AI_OUT_ALLOWED);
	if (d->allowed)
	{
		d->reset_at = c.cal.day_end;
		d->has_reset_at = true;
		d->standing = c.standing;
		return;
	}
	if (v.facts.known)
	{
		/* the refusing limit, with what it leaves and when a retry may pass */
		c.standing.known = false;
		ai_stand(&c, c.refused_by ? NULL : ai_outcome_name(v.outcome),
				 c.refused_by ? c.refused_by->id : 0,
				 c.refused_by ? (int) c.refused_by->metric :
				 v.outcome == AI_OUT_TOKENS ? AI_METRIC_TOKENS :
				 v.facts.money ? AI_METRIC_CENTS : AI_METRIC_REQUESTS,
				 v.facts.limit,
				 v.facts.limit - ai_money_add(v.facts.used, v.facts.held),
				 v.retry_never ? 0 : v.retry_at, v.window_secs);
		d->standing = c.standing;
	}
	d->limited_by = ai_outcome_name(v.outcome);
	d->error = ai_refusal_message(&v, plan, c.refused_by);
	d->has_remaining = false;
	d->retryable = v.retryable;
	d->facts = v.facts;
	if (v.retry_never)
		d->retry_after = -1;
	else
	{
		d->retry_after = ai_seconds_until(c.now, v.retry_at);
		d->reset_at = v.retry_at;
		d->has_reset_at = true;
	}
}

/*
 * Every limit that applies to a user now, one AiLayerState per layer, in
 * the order a check tests them; returns how many.  Reads only: no counter
 * is made or changed (the lock is taken shared), so an application may
 * call it for every response, to send rate-limit headers.
 */
int
ai_layer_states(const AiUser *u, const AiPlan *plan, AiLayerState *out)
{
	TimestampTz now = GetCurrentTimestamp();
	AiCalendar	cal;
	AiEntry    *e;
	AiMoney		spend = 0;
	bool		spend_exact = true;
	int			n = 0;

	ai_calendar_at(now, &cal);
	if (plan->has_budget)
		spend_exact = ai_ensure_spend(u, &cal, now, false, &spend);

	memset(out, 0, sizeof(AiLayerState) * AI_MAX_LAYERS);
	LWLockAcquire(u->lock, LW_SHARED);
	e = ai_entry_lookup(&u->key, u->hashcode, false, now, NULL, 0);
	if (plan->blocked && plan->blocked_until > now)
	{
		out[n].layer = ai_outcome_name(AI_OUT_BLOCKED);
		out[n].reset_at = TIMESTAMP_NOT_FINITE(plan->blocked_until) ? 0 : plan->blocked_until;
		n++;
	}
	if (plan->has_burst)
	{
		AiLayerState *s = &out[n++];

		s->layer = ai_outcome_name(AI_OUT_BURST);
		s->facts.known = true;
		s->facts.limit = Max(plan->burst_limit, 0);
		s->facts.used = (e && e->burst_window_ms > 0) ? ai_burst_count(e, now) : 0;
		s->reset_at = s->facts.used > 0 ? ai_burst_oldest_leaves(e, now) : 0;
		s->window_secs = ai_burst_window_secs(plan);
	}
	if (plan->has_daily)
	{
		AiLayerState *s = &out[n++];

		s->layer = ai_outcome_name(AI_OUT_DAILY);
		s->facts.known = true;
		s->facts.limit = Max(plan->daily_limit, 0);
		s->facts.used = (e && e->day == cal.day) ? e->daily_count : 0;
		s->reset_at = cal.day_end;
		s->window_secs = ai_day_secs(&cal);
	}
	if (plan->has_tpm)
	{
		AiLayerState *s = &out[n++];

		s->layer = ai_outcome_name(AI_OUT_TOKENS);
		s->facts.known = true;
		s->facts.limit = Max(plan->tokens_per_minute, 0);
		s->facts.used = e ? (int64) ai_tokens_count(e, now) : 0;
		s->reset_at = s->facts.used > 0 ? ai_tokens_oldest_leave(e, now) : 0;
		s->window_secs = 60;
	}
	if (plan->has_budget)
	{
		AiLayerState *s = &out[n++];

		s->layer = ai_outcome_name(AI_OUT_BUDGET);
		s->facts.money = true;
		s->facts.known = true;
		s->facts.limit = Max(plan->budget, 0);
		if (spend_exact && e && ai_spend_is_cached(e, cal.month))
			spend = ai_money_add(e->committed_spend, ai_inflight_cost(e));
		s->facts.used = spend;
		/* open and unexpired, without freeing the expired ones (shared lock) */
		s->facts.held = e ? ai_resv_held(e, now, NULL) : 0;
		s->reset_at = cal.month_end;
		s->window_secs = ai_month_secs(&cal);
	}
	LWLockRelease(u->lock);

	for (int i = 0; i < n; i++)
		if (out[i].facts.known)
			out[i].remaining = Max(out[i].facts.limit -
								   ai_money_add(out[i].facts.used, out[i].facts.held), 0);
	return n;
}

/*
 * Forget one user's burst, daily and token counts in this database.
 * Recorded spend stays (it is in the usage tables), and so do the estimates
 * of requests in flight: they are held until their record, their release
 * or their expiry, so a reset never hands out money they hold.
 */
void
ai_reset_user(const AiUser *u)
{
	AiEntry    *e;

	LWLockAcquire(u->lock, LW_EXCLUSIVE);
	e = ai_entry_lookup(&u->key, u->hashcode, false, 0, NULL, 0);
	if (e != NULL)
	{
		memset(e->burst, 0, sizeof(e->burst));
		e->daily_count = 0;
		memset(e->tokens, 0, sizeof(e->tokens));
		ai_partition_changed(u->hashcode);
		ai_entry_changed(e);
	}
	LWLockRelease(u->lock);
}

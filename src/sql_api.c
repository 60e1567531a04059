/*-------------------------------------------------------------------------
 *
 * sql_api.c
 *		The SQL-callable functions of ai_ratelimit: argument checks, plan
 *		resolution and result rows.  The decisions themselves are made in
 *		decide.c and usage.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "accounts.h"
#include "calendar.h"
#include "config.h"
#include "decide.h"
#include "replica.h"
#include "reservations.h"
#include "rings.h"
#include "rules.h"
#include "rulestate.h"
#include "shmem.h"
#include "spend.h"
#include "stats.h"
#include "usage.h"
#include "users.h"

PG_FUNCTION_INFO_V1(ai_check_limit);
PG_FUNCTION_INFO_V1(ai_explain_limits);
PG_FUNCTION_INFO_V1(ai_model_family);
PG_FUNCTION_INFO_V1(ai_account_limits);
PG_FUNCTION_INFO_V1(ai_enforce_limit);
PG_FUNCTION_INFO_V1(ai_peek_limit);
PG_FUNCTION_INFO_V1(ai_reset_limits);
PG_FUNCTION_INFO_V1(ai_record_usage);
PG_FUNCTION_INFO_V1(ai_monthly_spend);
PG_FUNCTION_INFO_V1(ai_ratelimit_capacity);
PG_FUNCTION_INFO_V1(ai_ratelimit_verify);
PG_FUNCTION_INFO_V1(ai_ratelimit_status);
PG_FUNCTION_INFO_V1(ai_ratelimit_stats);
PG_FUNCTION_INFO_V1(ai_ratelimit_reset_stats);
PG_FUNCTION_INFO_V1(ai_ratelimit_saves);
PG_FUNCTION_INFO_V1(ai_ratelimit_timezone_changed_at);
PG_FUNCTION_INFO_V1(ai_ratelimit_oldest_open_record);
PG_FUNCTION_INFO_V1(ai_account_chain_srf);
PG_FUNCTION_INFO_V1(ai_release_reservation);
PG_FUNCTION_INFO_V1(ai_extend_reservation);
PG_FUNCTION_INFO_V1(ai_limit_state);
PG_FUNCTION_INFO_V1(ai_estimate_cost);

/*
 * ai_limit_result: 7 columns up to 1.3; 1.4 adds limit_value, used, held,
 * retryable; 1.9 adds ratelimit and ratelimit_policy
 */
#define RESULT_NATTS_13 7
#define RESULT_NATTS_18 11
#define RESULT_NATTS 13

/*
 * Result row descriptors of the check functions, one per function oid
 * called in this backend, built at its first call and kept for the
 * backend's life: the array grows with the functions, never with the calls.
 */
typedef struct ResultDesc
{
	Oid			fn_oid;
	TupleDesc	desc;
} ResultDesc;

/*
 * Every SQL entry point begins here: the library must be preloaded, and
 * the call reads one snapshot of the caches throughout (config.c).
 */
static void
ai_call_start(void)
{
	ai_require_loaded();
	ai_caches_new_call();
}

static ResultDesc *result_descs = NULL;
static int	nresult_descs = 0;
static int	maxresult_descs = 0;

static TupleDesc
ai_result_desc(FunctionCallInfo fcinfo)
{
	Oid			fn = fcinfo->flinfo->fn_oid;
	TupleDesc	td;
	MemoryContext old;

	for (int i = 0; i < nresult_descs; i++)
		if (result_descs[i].fn_oid == fn)
			return result_descs[i].desc;
	if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "ai_ratelimit: function must return a composite type");
	if (td->natts != RESULT_NATTS && td->natts != RESULT_NATTS_18 &&
		td->natts != RESULT_NATTS_13)
		elog(ERROR, "ai_ratelimit: result type has %d columns, expected %d",
			 td->natts, RESULT_NATTS);
	if (nresult_descs == maxresult_descs)
	{
		maxresult_descs = Max(8, maxresult_descs * 2);
		result_descs = result_descs == NULL ?
			MemoryContextAlloc(TopMemoryContext, sizeof(ResultDesc) * maxresult_descs) :
			repalloc(result_descs, sizeof(ResultDesc) * maxresult_descs);
	}
	old = MemoryContextSwitchTo(TopMemoryContext);
	td = BlessTupleDesc(CreateTupleDescCopy(td));
	MemoryContextSwitchTo(old);
	result_descs[nresult_descs].fn_oid = fn;
	result_descs[nresult_descs].desc = td;
	nresult_descs++;
	return td;
}

/* NULL, empty or oversized user ids are refused. */
static void
ai_check_user_id(const char *id, int len)
{
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user_id must not be empty")));
	if (len > AI_MAX_USER_ID_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("user_id is too long"),
				 errdetail("A user id has %d bytes; at most %d are allowed.",
						   len, AI_MAX_USER_ID_LEN)));
}

/* The user id argument as a C string; errors on NULL and bad values. */
static char *
ai_arg_user_id(FunctionCallInfo fcinfo, int argno, int *len)
{
	text	   *t;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("user_id must not be null")));
	t = PG_GETARG_TEXT_PP(argno);
	*len = VARSIZE_ANY_EXHDR(t);
	ai_check_user_id(VARDATA_ANY(t), *len);
	return text_to_cstring(t);
}

/* The user of a call that counts for it: checked, hashed once. */
static void
ai_arg_user(FunctionCallInfo fcinfo, int argno, AiUser *u)
{
	int			len;
	char	   *id = ai_arg_user_id(fcinfo, argno, &len);

	ai_user_init(u, id, len);
}

/*
 * The accounts a call of this user charges (1.8): the account named by
 * argument argno (the user must be a member), or else the user's default
 * account, and every account above it, into user->chain.  None when the
 * user belongs to no account and names none.
 */
static void
ai_arg_account(FunctionCallInfo fcinfo, int argno, AiUser *user, bool record)
{
	const char *named = NULL;
	const char *account;
	const char *chain[AI_MAX_ACCOUNT_DEPTH];
	const char **copy;
	int			n;

	if (argno < PG_NARGS() && !PG_ARGISNULL(argno))
	{
		text	   *t = PG_GETARG_TEXT_PP(argno);

		if (VARSIZE_ANY_EXHDR(t) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("account must not be empty"),
					 errhint("Name an account of ai_accounts, or pass NULL for the user's default account.")));
		named = text_to_cstring(t);
	}
	account = ai_user_account(user, named, record);
	if (account == NULL)
		return;
	n = ai_account_chain(account, chain);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("account \"%s\" does not exist", account)));
	/* the tree's cache may be read again during the call: keep copies */
	copy = palloc(sizeof(char *) * n);
	for (int k = 0; k < n; k++)
		copy[k] = pstrdup(chain[k]);
	user->chain = copy;
	user->nchain = n;
}

/*
 * The accounts a record of reservation `id` charges (1.9): those its check
 * charged, nearest first, whatever the tree and the memberships are now, so
 * a member moved to another team, or a team moved in the tree, while its
 * call ran is charged where its check held the estimate.  An account named
 * by argument argno other than the one the check charged is not charged
 * instead: a WARNING, and a misnamed_record in ai_ratelimit_stats.  False
 * when the reservation is not open (the record is late, or a repeat).
 */
static bool
ai_reservation_accounts(FunctionCallInfo fcinfo, int argno, AiUser *user, int64 id)
{
	AiKey		keys[AI_MAX_ACCOUNT_DEPTH];
	const char *ids[AI_MAX_ACCOUNT_DEPTH];
	const char **copy;
	bool		ordered;
	int			n = ai_resv_accounts(user, id, keys, &ordered);

	if (n < 0)
		return false;
	n = ai_accounts_of_keys(keys, n, ordered, ids);
	if (argno < PG_NARGS() && !PG_ARGISNULL(argno))
	{
		char	   *named = text_to_cstring(PG_GETARG_TEXT_PP(argno));

		if (n == 0 || strcmp(named, ids[0]) != 0)
		{
			pg_atomic_fetch_add_u64(&ai_shared->misnamed_records, 1);
			ereport(WARNING,
					(errcode(ERRCODE_WARNING),
					 errmsg("reservation " INT64_FORMAT " was checked under %s%s%s, not account \"%s\"",
							id, n > 0 ? "account \"" : "no account", n > 0 ? ids[0] : "",
							n > 0 ? "\"" : "", named),
					 errdetail("The record charges what its check charged; the account it names is not charged instead."),
					 errhint("Name the same account at the check and at the record, or none at both.")));
		}
	}
	copy = palloc(sizeof(char *) * Max(n, 1));
	for (int k = 0; k < n; k++)
		copy[k] = pstrdup(ids[k]);
	user->chain = copy;
	user->nchain = n;
	return true;
}

/*
 * The plan for a check: the named one, or the user's, or 'free'; with the
 * user's row of ai_user_limits applied, into *out.
 */
static void
ai_arg_plan(FunctionCallInfo fcinfo, int argno, const AiUser *user, AiPlan *out)
{
	const char *name;
	const AiPlan *plan;

	if (PG_ARGISNULL(argno))
		name = ai_user_plan(user);
	else
		name = text_to_cstring(PG_GETARG_TEXT_PP(argno));

	plan = ai_plan_lookup(name);
	/* with no plan named, the user's default: say where "free" came from */
	if (plan == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown plan \"%s\"", name),
				 PG_ARGISNULL(argno) ?
				 errdetail("User \"%s\" has no row in ai_user_plans, and users without one are on the plan \"free\".",
						   user->id) : 0,
				 PG_ARGISNULL(argno) ?
				 errhint("Add a plan named \"free\" to ai_plans, or give the user a row in ai_user_plans.") :
				 errhint("Plans are the rows of ai_plans.")));
	*out = *plan;
	ai_apply_user_limits(user, out);
}

/* A number of a layer as numeric: cents for the budget, else requests or tokens. */
static Datum
ai_fact_numeric(const AiFacts *f, int64 v)
{
	if (f->money)
		return ai_money_to_numeric(v);
	return DirectFunctionCall1(int8_numeric, Int64GetDatum(v));
}

static char *
ai_fact_text(const AiFacts *f, int64 v)
{
	return DatumGetCString(DirectFunctionCall1(numeric_out, ai_fact_numeric(f, v)));
}

/*
 * A refusal in a stable form for programs, as JSON: the keys limited_by,
 * limit, used, held, reset_at, retry_after and retryable, with null where a
 * value does not apply.  ai_enforce_limit sends it as the error's HINT.
 */
static char *
ai_refusal_json(const AiDecision *d)
{
	StringInfoData b;

	initStringInfo(&b);
	appendStringInfoString(&b, "{\"limited_by\": ");
	escape_json(&b, d->limited_by);
	if (d->facts.known)
		appendStringInfo(&b, ", \"limit\": %s, \"used\": %s, \"held\": %s",
						 ai_fact_text(&d->facts, d->facts.limit),
						 ai_fact_text(&d->facts, d->facts.used),
						 ai_fact_text(&d->facts, d->facts.held));
	else
		appendStringInfoString(&b, ", \"limit\": null, \"used\": null, \"held\": null");
	appendStringInfoString(&b, ", \"reset_at\": ");
	if (d->has_reset_at)
	{
		char		buf[MAXDATELEN + 1];
		struct pg_tm tm;
		fsec_t		fsec;

		/* ISO 8601 in UTC, as JSON clients parse it */
		if (timestamp2tm(d->reset_at, NULL, &tm, &fsec, NULL, NULL) == 0)
		{
			EncodeDateTime(&tm, fsec, false, 0, NULL, USE_XSD_DATES, buf);
			appendStringInfo(&b, "\"%sZ\"", buf);
		}
		else
			appendStringInfoString(&b, "null");
	}
	else
		appendStringInfoString(&b, "null");
	if (d->retry_after >= 0)
		appendStringInfo(&b, ", \"retry_after\": %d", d->retry_after);
	else
		appendStringInfoString(&b, ", \"retry_after\": null");
	appendStringInfo(&b, ", \"retryable\": %s}", d->retryable ? "true" : "false");
	return b.data;
}

/* Why no retry can succeed, for ai_enforce_limit's DETAIL. */
static const char *
ai_never_words(const AiDecision *d)
{
	switch (d->outcome)
	{
		case AI_OUT_BLOCKED:
			return "this user is blocked until the block is lifted: a retry cannot succeed";
		case AI_OUT_BUDGET:
			return "this user's monthly budget is 0: a retry cannot succeed";
		case AI_OUT_TOKENS:
			return "the request needs more tokens than this plan allows in a minute: a retry cannot succeed";
		default:
			return "this plan allows no requests: a retry cannot succeed";
	}
}

/*
 * The IETF rate-limit header fields of a check's answer, as structured
 * field values (draft-ietf-httpapi-ratelimit-headers): RateLimit-Policy
 * names the limit the answer speaks of, its quota and window
 * ("daily";q=50;w=86400, with qu="tokens" or qu="cents" for what is not a
 * request count), RateLimit what it leaves and in how many seconds it is
 * whole again, or a refused request may pass ("daily";r=41;t=3600).
 * Integers: cents are whole cents, rounded down.  A rule of ai_rules is
 * named "rule-<rule_id>".
 */
/* Append bytes to a field being formed in a buffer that has room. */
static inline char *
ai_field_put(char *p, const char *s, int len)
{
	memcpy(p, s, len);
	return p + len;
}

#define AI_FIELD_PUT_LIT(p, lit)	ai_field_put((p), (lit), sizeof(lit) - 1)

static void
ai_standing_fields(const AiStanding *st, text **ratelimit, text **policy)
{
	/* the name, two integers of up to 20 characters and the unit fit */
	char		buf[128];
	char		name[32];
	int			name_len;
	char	   *p;
	int64		q = st->limit;
	int64		r = st->left;

	if (st->layer != NULL)
	{
		name_len = Min(strlen(st->layer), sizeof(name) - 1);
		memcpy(name, st->layer, name_len);
	}
	else
	{
		memcpy(name, "rule-", 5);
		name_len = 5 + pg_ltoa(st->rule_id, name + 5);
	}
	if (st->unit == AI_METRIC_CENTS)
	{
		q /= AI_MONEY_UNITS_PER_CENT;
		r /= AI_MONEY_UNITS_PER_CENT;
	}

	/* "<name>";q=<quota>;w=<window>[;qu="tokens"|"cents"] */
	p = AI_FIELD_PUT_LIT(buf, "\"");
	p = ai_field_put(p, name, name_len);
	p = AI_FIELD_PUT_LIT(p, "\";q=");
	p += pg_lltoa(q, p);
	p = AI_FIELD_PUT_LIT(p, ";w=");
	p += pg_ltoa(st->window_secs, p);
	if (st->unit == AI_METRIC_TOKENS)
		p = AI_FIELD_PUT_LIT(p, ";qu=\"tokens\"");
	else if (st->unit == AI_METRIC_CENTS)
		p = AI_FIELD_PUT_LIT(p, ";qu=\"cents\"");
	*policy = cstring_to_text_with_len(buf, p - buf);

	/* "<name>";r=<left>[;t=<seconds>] */
	p = AI_FIELD_PUT_LIT(buf, "\"");
	p = ai_field_put(p, name, name_len);
	p = AI_FIELD_PUT_LIT(p, "\";r=");
	p += pg_lltoa(r, p);
	if (st->reset_at > 0)
	{
		p = AI_FIELD_PUT_LIT(p, ";t=");
		p += pg_ltoa(ai_seconds_until(st->at, st->reset_at), p);
	}
	*ratelimit = cstring_to_text_with_len(buf, p - buf);
}

static Datum
ai_decision_datum(FunctionCallInfo fcinfo, const AiDecision *d)
{
	Datum		values[RESULT_NATTS];
	bool		nulls[RESULT_NATTS];	/* a 1.3 type forms from the first 7 */
	TupleDesc	td = ai_result_desc(fcinfo);

	memset(nulls, 0, sizeof(nulls));
	values[0] = BoolGetDatum(d->allowed);
	if (d->error)
		values[1] = CStringGetTextDatum(d->error);
	else
		nulls[1] = true;
	if (!d->allowed && d->retry_after >= 0)
		values[2] = Int32GetDatum(d->retry_after);
	else
		nulls[2] = true;
	if (d->has_remaining)
		values[3] = Int32GetDatum(d->remaining);
	else
		nulls[3] = true;
	if (d->limited_by)
		values[4] = CStringGetTextDatum(d->limited_by);
	else
		nulls[4] = true;
	if (d->has_reset_at)
		values[5] = TimestampTzGetDatum(d->reset_at);
	else
		nulls[5] = true;
	if (d->reservation_id > 0)
		values[6] = Int64GetDatum(d->reservation_id);
	else
		nulls[6] = true;
	/* the refusing layer's numbers and whether a retry can succeed */
	if (d->facts.known)
	{
		values[7] = ai_fact_numeric(&d->facts, d->facts.limit);
		values[8] = ai_fact_numeric(&d->facts, d->facts.used);
		values[9] = ai_fact_numeric(&d->facts, d->facts.held);
	}
	else
		nulls[7] = nulls[8] = nulls[9] = true;
	values[10] = BoolGetDatum(d->retryable);
	nulls[10] = d->allowed;
	if (td->natts >= RESULT_NATTS && d->standing.known)
	{
		text	   *ratelimit;
		text	   *policy;

		ai_standing_fields(&d->standing, &ratelimit, &policy);
		values[11] = PointerGetDatum(ratelimit);
		values[12] = PointerGetDatum(policy);
	}
	else
		nulls[11] = nulls[12] = true;
	return HeapTupleGetDatum(heap_form_tuple(td, values, nulls));
}

/* A token count argument: not NULL, not negative, at most AI_MAX_TOKENS. */
static int64
ai_arg_tokens(FunctionCallInfo fcinfo, int argno, const char *name)
{
	int64		v;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
	v = PG_GETARG_INT64(argno);
	if (v < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", name),
				 errdetail("%s is " INT64_FORMAT ".", name, v)));
	if (v > AI_MAX_TOKENS)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s is out of range", name),
				 errdetail("%s is " INT64_FORMAT "; one call may count at most " INT64_FORMAT " tokens.",
						   name, v, AI_MAX_TOKENS)));
	return v;
}

/* A model name argument: not NULL, not empty, not oversized. */
static char *
ai_arg_model(FunctionCallInfo fcinfo, int argno)
{
	text	   *mt;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model must not be null")));
	mt = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(mt) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model must not be empty")));
	if (VARSIZE_ANY_EXHDR(mt) > AI_MAX_MODEL_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("model name is too long"),
				 errdetail("At most %d bytes are allowed.", AI_MAX_MODEL_LEN)));
	return text_to_cstring(mt);
}

/*
 * The most a call can cost: its input tokens at the model's input price and
 * every output token it may produce at the output price (ai_model_prices;
 * a model with no price as ai_ratelimit.unknown_model says).
 */
static AiMoney
ai_call_price(const char *model, int64 input_tokens, int64 max_output_tokens)
{
	AiPrice		price;

	ai_price_lookup(model, &price, false);
	return ai_money_add(input_tokens * price.input, max_output_tokens * price.output);
}

/*
 * The model and token counts of a check (arguments argno .. argno + 2:
 * model, input_tokens, max_output_tokens).  With a model and either count,
 * the call is priced (ai_model_prices): the input tokens at the input
 * price and every output token it may produce at the output price.  The
 * reservation is then the larger of that and the estimate the caller gave,
 * and, when the caller gave no token estimate, the tokens are the two
 * counts.  A check names no model, or gives no count: nothing changes.
 */
static void
ai_arg_priced_call(FunctionCallInfo fcinfo, int argno, AiMoney *est, bool *has_est,
				   int64 *est_tokens)
{
	char	   *model;
	int64		in_tok = 0;
	int64		out_tok = 0;
	AiMoney		price;

	if (PG_ARGISNULL(argno) || (PG_ARGISNULL(argno + 1) && PG_ARGISNULL(argno + 2)))
	{
		if (!PG_ARGISNULL(argno + 1) || !PG_ARGISNULL(argno + 2))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("input_tokens and max_output_tokens need a model"),
					 errhint("Name the model the call uses: model => '...'.")));
		if (!PG_ARGISNULL(argno))
			(void) ai_arg_model(fcinfo, argno);	/* checked all the same */
		return;
	}
	model = ai_arg_model(fcinfo, argno);
	if (!PG_ARGISNULL(argno + 1))
		in_tok = ai_arg_tokens(fcinfo, argno + 1, "input_tokens");
	if (!PG_ARGISNULL(argno + 2))
		out_tok = ai_arg_tokens(fcinfo, argno + 2, "max_output_tokens");
	price = ai_call_price(model, in_tok, out_tok);
	*est = Max(*est, price);
	*has_est = true;
	if (*est_tokens == 0)
		*est_tokens = in_tok + out_tok;
}

static void
ai_run_check(FunctionCallInfo fcinfo, const char *func, bool consume, bool with_estimate,
			 AiDecision *d)
{
	AiUser		user;
	AiPlan		plan;
	bool		has_est = with_estimate && PG_NARGS() > 2 && !PG_ARGISNULL(2);
	AiMoney		est = 0;
	int64		est_tokens = 0;
	const char *model = NULL;

	ai_call_start();
	ai_require_primary(func);
	ai_arg_user(fcinfo, 0, &user);
	ai_arg_plan(fcinfo, 1, &user, &plan);
	if (has_est)
		est = ai_money_from_numeric(PG_GETARG_DATUM(2), true, "estimated_cost_cents");
	if (with_estimate && PG_NARGS() > 3 && !PG_ARGISNULL(3))
	{
		est_tokens = PG_GETARG_INT64(3);
		if (est_tokens < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("estimated_tokens must not be negative")));
		if (est_tokens > 3 * AI_MAX_TOKENS)
			ereport(ERROR,
					(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
					 errmsg("estimated_tokens is out of range"),
					 errdetail("At most " INT64_FORMAT " tokens are allowed.", 3 * AI_MAX_TOKENS)));
	}
	/* 1.5: the model and its token counts price the call */
	if (with_estimate && PG_NARGS() > 6)
	{
		ai_arg_priced_call(fcinfo, 4, &est, &has_est, &est_tokens);
		if (!PG_ARGISNULL(4))
			model = ai_arg_model(fcinfo, 4);	/* 1.6: the rules of that model apply */
	}
	/* 1.8: the account named, or the user's default one, and those above it */
	ai_arg_account(fcinfo, with_estimate ? 7 : PG_NARGS(), &user, false);
	ai_decide(&user, &plan, model, est, has_est, est_tokens, consume, d);
}

/* ai_check_limit(user_id, plan, estimated_cost_cents) */
Datum
ai_check_limit(PG_FUNCTION_ARGS)
{
	AiDecision	d;

	ai_run_check(fcinfo, "ai_check_limit", true, true, &d);
	return ai_decision_datum(fcinfo, &d);
}

/* ai_enforce_limit: like ai_check_limit, but a refusal is an ERROR. */
Datum
ai_enforce_limit(PG_FUNCTION_ARGS)
{
	AiDecision	d;

	ai_run_check(fcinfo, "ai_enforce_limit", true, true, &d);
	if (!d.allowed)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("%s", d.error),
				 d.retry_after >= 0 ?
				 errdetail("retry after %d seconds", d.retry_after) :
				 errdetail("%s", ai_never_words(&d)),
				 errhint("%s", ai_refusal_json(&d)),
				 err_generic_string(PG_DIAG_CONSTRAINT_NAME, d.limited_by)));
	return ai_decision_datum(fcinfo, &d);
}

/* ai_peek_limit(user_id, plan): what a check would answer, taking nothing. */
Datum
ai_peek_limit(PG_FUNCTION_ARGS)
{
	AiDecision	d;

	ai_run_check(fcinfo, "ai_peek_limit", false, false, &d);
	return ai_decision_datum(fcinfo, &d);
}

/*
 * ai_reset_limits(user_id): forget the user's burst, daily and token
 * counts, and the requests and minute tokens counted under its rules.
 * Cents stay, and estimates in flight stay held: a reset never hands out
 * money.
 */
Datum
ai_reset_limits(PG_FUNCTION_ARGS)
{
	AiUser		user;

	ai_call_start();
	ai_require_primary("ai_reset_limits");
	ai_arg_user(fcinfo, 0, &user);
	ai_reset_user(&user);
	ai_rules_reset_user(&user);
	PG_RETURN_VOID();
}

/*
 * A rule's state for a user now, as the numbers of a layer (a peek:
 * nothing is counted); *remaining is what a request may still take.
 */
static void
ai_rule_facts(const AiRule *r, const AiUser *user, TimestampTz now, AiFacts *f,
			  int64 *remaining, AiRuleState *rs)
{
	ai_rule_state(r, user, now, rs);
	memset(f, 0, sizeof(*f));
	f->known = true;
	f->money = (r->metric == AI_METRIC_CENTS);
	f->limit = r->max;
	f->used = rs->used;
	f->held = rs->held;
	*remaining = Max(r->max - ai_money_add(rs->used, rs->held), 0);
}

/*
 * The rows of ai_limit_state for the rules of ai_rules that bind the user
 * under the plan, for calls of any model: layer "rule:<rule_id>", in what
 * the rule counts, with its window's length.
 */
static void ai_limit_state_holder(ReturnSetInfo *rsinfo, const AiUser *user,
								  const AiRule **binding, int n, TimestampTz now);

/*
 * The holder of the rules of level k of a user's call: the user itself
 * (k = -1), or the k-th account it charges (made in *acct).
 */
static const AiUser *
ai_level_holder(const AiUser *user, int k, AiUser *acct)
{
	if (k < 0)
		return user;
	ai_account_init(acct, user->chain[k], strlen(user->chain[k]));
	return acct;
}

static void
ai_limit_state_rules(ReturnSetInfo *rsinfo, const AiUser *user, const AiPlan *plan)
{
	const AiRule **binding;
	int			n;
	TimestampTz now = GetCurrentTimestamp();
	AiUser		acct;

	/* the user's rules, then those of each account its call charges */
	for (int k = -1; k < user->nchain; k++)
	{
		const AiUser *holder = ai_level_holder(user, k, &acct);

		n = ai_rules_binding(plan->name, holder, &binding);
		ai_limit_state_holder(rsinfo, holder, binding, n, now);
	}
}

/* The rows of ai_limit_state for some rules of one holder (user or account). */
static void
ai_limit_state_holder(ReturnSetInfo *rsinfo, const AiUser *user, const AiRule **binding, int n,
					  TimestampTz now)
{
	for (int i = 0; i < n; i++)
	{
		AiRuleState rs;
		AiFacts		f;
		int64		remaining;
		Datum		v[7];
		bool		nl[7] = {0};

		ai_rule_facts(binding[i], user, now, &f, &remaining, &rs);
		v[0] = CStringGetTextDatum(psprintf("rule:%d", binding[i]->id));
		v[1] = ai_fact_numeric(&f, f.limit);
		v[2] = ai_fact_numeric(&f, f.used);
		v[3] = ai_fact_numeric(&f, f.held);
		v[4] = ai_fact_numeric(&f, remaining);
		v[5] = TimestampTzGetDatum(rs.reset_at);
		nl[5] = (rs.reset_at == 0);
		v[6] = Int32GetDatum(rs.window_secs);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
}

/*
 * ai_limit_state(user_id, plan): one row per limit that applies to the user
 * now (layer, limit_value, used, held, remaining, reset_at, window_seconds),
 * read without counting anything: what an application needs for
 * rate-limit headers.  Primary only, like a peek: a standby's counters are
 * a copy.
 */
Datum
ai_limit_state(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AiUser		user;
	AiPlan		plan;
	AiLayerState st[AI_MAX_LAYERS];
	int			n;

	ai_call_start();
	ai_require_primary("ai_limit_state");
	ai_arg_user(fcinfo, 0, &user);
	ai_arg_plan(fcinfo, 1, &user, &plan);
	ai_arg_account(fcinfo, 2, &user, false);	/* 1.8: the account's rules too */
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	n = ai_layer_states(&user, &plan, st);
	for (int i = 0; i < n; i++)
	{
		Datum		v[7];
		bool		nl[7] = {0};

		v[0] = CStringGetTextDatum(st[i].layer);
		if (st[i].facts.known)
		{
			v[1] = ai_fact_numeric(&st[i].facts, st[i].facts.limit);
			v[2] = ai_fact_numeric(&st[i].facts, st[i].facts.used);
			v[3] = ai_fact_numeric(&st[i].facts, st[i].facts.held);
			v[4] = ai_fact_numeric(&st[i].facts, st[i].remaining);
			v[6] = Int32GetDatum(st[i].window_secs);
		}
		else
			nl[1] = nl[2] = nl[3] = nl[4] = nl[6] = true;
		v[5] = TimestampTzGetDatum(st[i].reset_at);
		nl[5] = (st[i].reset_at == 0);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	ai_limit_state_rules(rsinfo, &user, &plan);
	return (Datum) 0;
}

/*
 * The family of a model's name, and the row of ai_model_prices that prices
 * it, for ai_explain_limits (1.9: its last two columns); NULL when the call
 * names no model.
 */
typedef struct AiExplainModel
{
	const char *family;
	const char *priced_as;
} AiExplainModel;

/* One row of ai_explain_limits. */
static void
ai_explain_row(ReturnSetInfo *rsinfo, const AiRule *r, const char *scope, const char *scope_id,
			   const char *metric, const char *window, const AiFacts *f, int64 remaining,
			   TimestampTz reset_at, const AiExplainModel *m)
{
	Datum		v[13];
	bool		nl[13] = {0};

	v[0] = Int32GetDatum(r ? r->id : 0);
	nl[0] = (r == NULL);
	v[1] = CStringGetTextDatum(scope);
	v[2] = CStringGetTextDatum(scope_id);
	v[3] = CStringGetTextDatum(r ? r->model : "*");
	v[4] = metric ? CStringGetTextDatum(metric) : (Datum) 0;
	nl[4] = (metric == NULL);
	v[5] = window ? CStringGetTextDatum(window) : (Datum) 0;
	nl[5] = (window == NULL);
	if (f->known)
	{
		v[6] = ai_fact_numeric(f, f->limit);
		v[7] = ai_fact_numeric(f, f->used);
		v[8] = ai_fact_numeric(f, f->held);
		v[9] = ai_fact_numeric(f, remaining);
	}
	else
	{
		nl[6] = nl[7] = nl[8] = true;
		v[9] = DirectFunctionCall1(int8_numeric, Int64GetDatum(0));
	}
	v[10] = TimestampTzGetDatum(reset_at);
	nl[10] = (reset_at == 0);
	if (rsinfo->setDesc->natts >= 13)
	{
		v[11] = m->family ? CStringGetTextDatum(m->family) : (Datum) 0;
		nl[11] = (m->family == NULL);
		v[12] = m->priced_as ? CStringGetTextDatum(m->priced_as) : (Datum) 0;
		nl[12] = (m->priced_as == NULL);
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
}

/* The row of ai_explain_limits for rule r, whose counters holder holds. */
static void
ai_explain_rule(ReturnSetInfo *rsinfo, const AiRule *r, const AiUser *holder, TimestampTz now,
				const AiExplainModel *m)
{
	AiRuleState rs;
	AiFacts		f;
	int64		remaining;

	ai_rule_facts(r, holder, now, &f, &remaining, &rs);
	ai_explain_row(rsinfo, r, ai_scope_name(r->scope), r->scope_id,
				   ai_metric_name(r->metric), ai_window_name(r->window), &f,
				   remaining, rs.reset_at, m);
}

/*
 * ai_explain_limits(user_id, model, plan): every limit that applies to the
 * user (and the model; NULL: any model) now, changing nothing: the plan's
 * own columns first (rule_id NULL), then the rules of ai_rules, each with
 * its maximum, what is used, what requests in flight hold, what is left,
 * and when it resets.  The answer to "why was I refused" and "what do I
 * have left".  Primary only, like ai_limit_state.
 */
Datum
ai_explain_limits(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	AiUser		user;
	AiPlan		plan;
	AiLayerState st[AI_MAX_LAYERS];
	const char *model = NULL;
	TimestampTz now = GetCurrentTimestamp();
	const AiRule **binding;
	int			n;
	AiExplainModel m = {NULL, NULL};

	ai_call_start();
	ai_require_primary("ai_explain_limits");
	ai_arg_user(fcinfo, 0, &user);
	if (!PG_ARGISNULL(1))
	{
		model = ai_arg_model(fcinfo, 1);
		m.family = pnstrdup(model, ai_model_family_len(model));
		m.priced_as = ai_price_row_of(model);
	}
	ai_arg_plan(fcinfo, 2, &user, &plan);
	ai_arg_account(fcinfo, 3, &user, false);	/* 1.8: member and account rules */
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	n = ai_layer_states(&user, &plan, st);
	for (int i = 0; i < n; i++)
	{
		const char *layer = st[i].layer;
		const char *metric = "requests";
		const char *window = "day";

		if (strcmp(layer, "blocked") == 0)
		{
			ai_explain_row(rsinfo, NULL, "user", user.id, NULL, NULL, &st[i].facts, 0,
						   st[i].reset_at, &m);
			continue;
		}
		if (strcmp(layer, "burst") == 0)
			window = st[i].window_secs == 60 ? "minute" :
				psprintf("%d seconds", st[i].window_secs);
		else if (strcmp(layer, "tokens") == 0)
		{
			metric = "tokens";
			window = "minute";
		}
		else if (strcmp(layer, "monthly_budget") == 0)
		{
			metric = "cents";
			window = "month";
		}
		ai_explain_row(rsinfo, NULL, "plan", plan.name, metric, window, &st[i].facts,
					   st[i].remaining, st[i].reset_at, &m);
	}

	/* the user's rules, then those of each account its call charges */
	for (int k = -1; k < user.nchain; k++)
	{
		AiUser		acct;
		const AiUser *holder = ai_level_holder(&user, k, &acct);

		n = ai_rules_binding(plan.name, holder, &binding);
		for (int i = 0; i < n; i++)
		{
			const AiRule *r = binding[i];

			if (ai_rule_matches_model(r, model))
				ai_explain_rule(rsinfo, r, holder, now, &m);
		}
	}
	return (Datum) 0;
}

/*
 * ai_ratelimit_timezone_changed_at(): when a process of this server last
 * saw ai_ratelimit.timezone change, or NULL (for 1.6's ai_compact_usage).
 */
Datum
ai_ratelimit_timezone_changed_at(PG_FUNCTION_ARGS)
{
	uint64		at;

	ai_call_start();
	at = pg_atomic_read_u64(&ai_shared->tz_changed_at);
	if (at == 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ((TimestampTz) at);
}

/*
 * ai_ratelimit_oldest_open_record(): the time before which no transaction
 * still open has recorded or can record a call (for ai_compact_usage).
 */
Datum
ai_ratelimit_oldest_open_record(PG_FUNCTION_ARGS)
{
	ai_call_start();
	PG_RETURN_TIMESTAMPTZ(ai_oldest_open_record());
}

/*
 * ai_account_chain(account_id): the accounts a check made for this account
 * charges, level 0 being the account itself and each next level the one it
 * belongs to, up to its root.  No rows for an account that does not exist.
 */
Datum
ai_account_chain_srf(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	const char *chain[AI_MAX_ACCOUNT_DEPTH];
	int			n;

	ai_call_start();
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	if (PG_ARGISNULL(0))
		return (Datum) 0;
	n = ai_account_chain(text_to_cstring(PG_GETARG_TEXT_PP(0)), chain);
	for (int i = 0; i < n; i++)
	{
		Datum		v[2];
		bool		nl[2] = {false, false};

		v[0] = Int32GetDatum(i);
		v[1] = CStringGetTextDatum(chain[i]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	return (Datum) 0;
}

/*
 * ai_release_reservation(reservation_id) returns boolean: give back the
 * estimate of a request whose AI call failed or was abandoned, at once.
 * True when it was held; otherwise false with a NOTICE that says why
 * (released before, settled by a record, expired): never an error, so a
 * client may release in every failure path; NULL (a check that reserved
 * nothing) gives NULL.  Not undone by a rollback:
 * the call it stood for did not happen either way.
 */
Datum
ai_release_reservation(PG_FUNCTION_ARGS)
{
	int64		id;
	AiReleaseResult r;
	AiUser		owner;
	AiKey		released;
	bool		named = (PG_NARGS() > 1);

	ai_call_start();
	ai_require_primary("ai_release_reservation");
	/* STRICT: a check that reserved nothing (NULL id) releases nothing */
	id = PG_GETARG_INT64(0);
	/* 1.9: (reservation_id, user_id) releases only that user's reservation */
	if (named)
		ai_arg_user(fcinfo, 1, &owner);
	r = ai_resv_release(id, GetCurrentTimestamp(), named ? &owner.key : NULL, &released);
	/* in the WAL too, so a crash or a standby does not hold it again */
	if (r == AI_RELEASE_DONE || r == AI_RELEASE_EXPIRED)
		ai_wal_log_resv_end(id, &released);
	switch (r)
	{
		case AI_RELEASE_DONE:
			PG_RETURN_BOOL(true);
		case AI_RELEASE_EXPIRED:
			ereport(NOTICE,
					(errmsg("reservation " INT64_FORMAT " had expired", id),
					 errdetail("It held nothing any more; it is gone now.")));
			break;
		case AI_RELEASE_SETTLING:
			ereport(NOTICE,
					(errmsg("reservation " INT64_FORMAT " is being settled by ai_record_usage in an open transaction", id),
					 errdetail("The record settles it when its transaction commits, and leaves it held if it rolls back.")));
			break;
		case AI_RELEASE_NOT_FOUND:
			ereport(NOTICE,
					(errmsg("reservation " INT64_FORMAT " is not open", id),
					 named ?
					 errdetail("It was released or settled before, it expired, or it is not a reservation of user \"%s\" in this database; nothing was given back.", owner.id) :
					 errdetail("It was released or settled before, it expired, or it is not a reservation of this database; nothing was given back.")));
			break;
	}
	PG_RETURN_BOOL(false);
}

/*
 * ai_extend_reservation(reservation_id, user_id, seconds) returns
 * timestamptz (1.9): a call that may outlive its reservation keeps its
 * estimate held, on the user and every account its check charged, until
 * `seconds` from now (never shorter than it was).  NULL, with a NOTICE,
 * when the reservation is not open: settled, released, expired (its room
 * may have been taken: the late record is counted in full), or another
 * user's.
 */
Datum
ai_extend_reservation(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	AiUser		owner;
	int32		secs;
	TimestampTz now;
	TimestampTz until;
	bool		settling;
	AiReservation copy;
	AiKey		shadows[AI_MAX_ACCOUNT_DEPTH];
	int			nshadows;

	ai_call_start();
	ai_require_primary("ai_extend_reservation");
	ai_arg_user(fcinfo, 1, &owner);
	secs = PG_GETARG_INT32(2);
	if (secs <= 0 || secs > 31 * 86400)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("seconds must be between 1 and %d", 31 * 86400),
				 errdetail("A reservation is held for at most 31 days from now.")));
	now = GetCurrentTimestamp();
	until = ai_resv_extend(id, &owner.key, now, now + (int64) secs * USECS_PER_SEC, &settling,
						   &copy, shadows, &nshadows);
	if (until != 0)
	{
		/* durable as the check was: logged, flushed when this commits */
		AiUser		accts[AI_MAX_ACCOUNT_DEPTH];
		const AiUser *acctp[AI_MAX_ACCOUNT_DEPTH];

		for (int k = 0; k < nshadows; k++)
		{
			memset(&accts[k], 0, sizeof(AiUser));
			accts[k].id = "";
			accts[k].key = shadows[k];
			accts[k].account = true;
			acctp[k] = &accts[k];
		}
		ai_wal_log_resv(&copy, &owner, acctp, nshadows);
		PG_RETURN_TIMESTAMPTZ(until);
	}
	if (settling)
		ereport(NOTICE,
				(errmsg("reservation " INT64_FORMAT " is being settled by ai_record_usage in an open transaction", id),
				 errdetail("Nothing to extend: its record is in.")));
	else
		ereport(NOTICE,
				(errmsg("reservation " INT64_FORMAT " of user \"%s\" is not open", id, owner.id),
				 errdetail("It was settled, released or has expired, or it is not this user's; nothing was extended. A record that names it is counted in full all the same.")));
	PG_RETURN_NULL();
}

/*
 * ai_record_usage(user_id, model, input_tokens, output_tokens,
 *				   cached_input_tokens, reservation_id
 *				   [, cache_write_tokens, cache_write_1h_tokens]) returns numeric cents
 */
Datum
ai_record_usage(PG_FUNCTION_ARGS)
{
	AiUser		user;
	char	   *model;
	AiTokens	tok;
	int64		resv = 0;
	bool		has_resv = false;

	ai_call_start();
	ai_require_primary("ai_record_usage");
	ai_arg_user(fcinfo, 0, &user);
	model = ai_arg_model(fcinfo, 1);
	memset(&tok, 0, sizeof(tok));
	tok.input = ai_arg_tokens(fcinfo, 2, "input_tokens");
	tok.output = ai_arg_tokens(fcinfo, 3, "output_tokens");
	if (PG_NARGS() > 4)
		tok.cached = ai_arg_tokens(fcinfo, 4, "cached_input_tokens");
	/* 1.4: prompt-cache writes, 5-minute and 1-hour */
	if (PG_NARGS() > 7)
	{
		tok.cache_write = ai_arg_tokens(fcinfo, 6, "cache_write_tokens");
		tok.cache_write_1h = ai_arg_tokens(fcinfo, 7, "cache_write_1h_tokens");
	}
	if (PG_NARGS() > 5 && !PG_ARGISNULL(5))
	{
		resv = PG_GETARG_INT64(5);
		has_resv = true;
		if (resv <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("reservation_id must be positive"),
					 errhint("Pass the reservation_id returned by ai_check_limit, or NULL.")));
	}
	/*
	 * 1.9: a record of an open reservation charges what its check charged;
	 * otherwise (1.8) the account named, or the user's default one
	 */
	if (!has_resv || !ai_reservation_accounts(fcinfo, 8, &user, resv))
		ai_arg_account(fcinfo, 8, &user, true);
	PG_RETURN_DATUM(ai_record(&user, model, &tok, resv, has_resv));
}

/*
 * ai_estimate_cost(model, input_tokens, max_output_tokens) returns numeric:
 * the most a call can cost before it is made (its input at the input price
 * and every output token it may produce at the output price), exact, from
 * ai_model_prices; the estimate to pass to ai_check_limit.  A model with no
 * price is priced by '*' (refused under ai_ratelimit.unknown_model = refuse).
 */
Datum
ai_estimate_cost(PG_FUNCTION_ARGS)
{
	text	   *mt;
	char	   *model;
	int64		in_tok;
	int64		out_tok;

	ai_call_start();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("model must not be null")));
	mt = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(mt) == 0 || VARSIZE_ANY_EXHDR(mt) > AI_MAX_MODEL_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("model must have 1 to %d bytes", AI_MAX_MODEL_LEN)));
	model = text_to_cstring(mt);
	in_tok = ai_arg_tokens(fcinfo, 1, "input_tokens");
	out_tok = ai_arg_tokens(fcinfo, 2, "max_output_tokens");
	PG_RETURN_DATUM(ai_money_to_numeric(ai_call_price(model, in_tok, out_tok)));
}

/*
 * ai_account_limits(account_id): every rule on an account (NULL: on every
 * account) with what the account and the accounts below it used, what
 * requests in flight hold there, what is left and when it resets; the
 * rows of ai_explain_limits for the account itself, whoever its members
 * are (the view ai_account_caps).  Primary only.
 */
Datum
ai_account_limits(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *only = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	TimestampTz now = GetCurrentTimestamp();
	AiExplainModel none = {NULL, NULL};
	int			n;

	ai_call_start();
	ai_require_primary("ai_account_limits");
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	n = ai_rules_count();
	for (int i = 0; i < n; i++)
	{
		const AiRule *r = ai_rule_at(i);
		AiUser		acct;

		if (r->scope != AI_SCOPE_ACCOUNT || (only != NULL && strcmp(only, r->scope_id) != 0))
			continue;
		ai_account_init(&acct, r->scope_id, strlen(r->scope_id));
		ai_explain_rule(rsinfo, r, &acct, now, &none);
	}
	return (Datum) 0;
}

/*
 * ai_model_family(model): the family a model's name counts and is priced
 * as, when it has no price row of its own: the name without a date at its
 * end (ai_model_family_len), or the name itself.
 */
Datum
ai_model_family(PG_FUNCTION_ARGS)
{
	char	   *model = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_TEXT_P(cstring_to_text_with_len(model, ai_model_family_len(model)));
}

/* ai_monthly_spend(user_id, month date) returns numeric cents */
Datum
ai_monthly_spend(PG_FUNCTION_ARGS)
{
	int			len;
	char	   *user_id;
	DateADT		month;

	ai_call_start();
	user_id = ai_arg_user_id(fcinfo, 0, &len);
	if (PG_NARGS() > 1 && !PG_ARGISNULL(1))
	{
		month = PG_GETARG_DATEADT(1);
		if (DATE_NOT_FINITE(month))
			ereport(ERROR,
					(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
					 errmsg("month must be a finite date")));
	}
	else
	{
		AiCalendar	cal;

		ai_calendar_at(GetCurrentTimestamp(), &cal);
		month = cal.day_date;
	}
	PG_RETURN_DATUM(ai_spend_in_month(user_id, month));
}

/* ai_ratelimit_capacity(): how full the shared hash and the reservation pool are */
Datum
ai_ratelimit_capacity(PG_FUNCTION_ARGS)
{
	TupleDesc	td;
	Datum		values[6];
	bool		nulls[6] = {0};
	int32		open_resv;

	ai_call_start();
	if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "ai_ratelimit_capacity must return a composite type");
	td = BlessTupleDesc(td);

	/* expired reservations are not open, even before the sweep frees them */
	open_resv = ai_resv_open_count(GetCurrentTimestamp());

	values[0] = Int32GetDatum(ai_max_keys);
	values[1] = Int64GetDatum(ai_entry_count());
	values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&ai_shared->evictions));
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&ai_shared->full_refusals));
	values[4] = Int32GetDatum(ai_max_reservations);
	values[5] = Int32GetDatum(open_resv);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(td, values, nulls)));
}

/*
 * ai_ratelimit_verify(): one row per problem found in the shared state
 * (leaked or broken reservations, records left in flight); no rows when
 * all is well.  Run it when no other transaction is open.
 */
Datum
ai_ratelimit_verify(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	List	   *problems = NIL;
	ListCell   *lc;

	ai_call_start();
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	ai_verify(&problems);
	foreach(lc, problems)
	{
		Datum		v = CStringGetTextDatum((char *) lfirst(lc));
		bool		n = false;

		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, &v, &n);
	}
	return (Datum) 0;
}

/* An entry of this database as ai_ratelimit_status shows it, copied under its lock. */
typedef struct AiStatusCopy
{
	AiEntry		e;
	int32		nresv;			/* open, unexpired reservations */
	AiMoney		reserved;		/* what they hold */
} AiStatusCopy;

/* A user's committed spend this month, by key, read from the usage tables. */
typedef struct AiMonthSpend
{
	AiKey		key;
	AiMoney		spend;
} AiMonthSpend;

/*
 * The committed spend this month of every user of this database with usage
 * in it, by key: for the users whose spend is not cached (a standby caches
 * none).  One query, read with the latest snapshot.
 */
static HTAB *
ai_month_spends(const AiCalendar *cal)
{
	static const char *q =
	"SELECT user_id, pg_catalog.sum(cost_cents) FROM ("
	" SELECT user_id, cost_cents FROM %s.ai_usage"
	"  WHERE day OPERATOR(pg_catalog.>=) $1 AND day OPERATOR(pg_catalog.<) $2"
	" UNION ALL"
	" SELECT user_id, cost_cents FROM %s.ai_usage_archive"
	"  WHERE day OPERATOR(pg_catalog.>=) $1 AND day OPERATOR(pg_catalog.<) $2) u"
	" GROUP BY user_id";
	HASHCTL		ctl;
	HTAB	   *spends;
	Oid			types[2] = {DATEOID, DATEOID};
	Datum		vals[2];
	const char *schema = ai_ext_schema();

	ctl.keysize = sizeof(AiKey);
	ctl.entrysize = sizeof(AiMonthSpend);
	ctl.hcxt = CurrentMemoryContext;
	spends = hash_create("ai_ratelimit spends this month", 1024, &ctl,
						 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	vals[0] = DateADTGetDatum(cal->month_start_date);
	vals[1] = DateADTGetDatum(cal->month_end_date);
	SPI_connect();
	ai_spi_read(psprintf(q, schema, schema), 2, types, vals);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;
		text	   *id = DatumGetTextPP(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		Datum		sum = SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull);
		AiKey		key;
		AiMonthSpend *ms;

		ai_make_key(&key, VARDATA_ANY(id), VARSIZE_ANY_EXHDR(id));
		ms = hash_search(spends, &key, HASH_ENTER, NULL);
		ms->spend = isnull ? 0 : ai_money_from_numeric(sum, false, "monthly spend");
	}
	SPI_finish();
	return spends;
}

/*
 * One row of ai_ratelimit_status from a copied entry.  *spends is read
 * (ai_month_spends) at the first entry whose spend is not cached.
 */
static void
ai_status_row(ReturnSetInfo *rsinfo, AiStatusCopy *c, TimestampTz now, const AiCalendar *cal,
			  HTAB **spends)
{
	Datum		v[11];
	bool		nl[11] = {0};
	AiEntry    *e = &c->e;
	uint32		burst = e->burst_window_ms > 0 ? ai_burst_count(e, now) : 0;
	TimestampTz leaves = burst > 0 ? ai_burst_oldest_leaves(e, now) : 0;
	const char *plan = ai_plan_name_by_hash(e->plan_hash);
	char		idbuf[AI_ID_PREFIX_LEN + 4];
	/* the bytes of the id kept (fewer if restored from an older layout) */
	int			kept = strnlen(e->id_prefix, Min(e->id_len, AI_ID_PREFIX_LEN));
	/* a cut id is cut at a character boundary */
	int			shown = kept < e->id_len ?
		pg_mbcliplen(e->id_prefix, kept, kept) : kept;

	memcpy(idbuf, e->id_prefix, shown);
	idbuf[shown] = '\0';
	if (shown < e->id_len)
		strcat(idbuf, "\xe2\x80\xa6");	/* the id goes on: an ellipsis */
	v[0] = CStringGetTextDatum(idbuf);
	v[1] = BoolGetDatum(shown < e->id_len);
	if (plan)
		v[2] = CStringGetTextDatum(plan);
	else
		nl[2] = true;
	v[3] = Int64GetDatum(burst);
	if (leaves > 0)
		v[4] = TimestampTzGetDatum(leaves);
	else
		nl[4] = true;
	v[5] = Int64GetDatum(e->day == cal->day ? e->daily_count : 0);
	v[6] = Int64GetDatum((int64) ai_tokens_count(e, now));
	v[7] = ai_money_to_numeric(c->reserved);
	v[8] = Int32GetDatum(c->nresv);
	v[9] = ai_money_to_numeric(ai_inflight_cost(e));
	if (ai_spend_is_cached(e, cal->month))
		v[10] = ai_money_to_numeric(ai_money_add(e->committed_spend, ai_inflight_cost(e)));
	else
	{
		AiMonthSpend *ms;

		if (*spends == NULL)
			*spends = ai_month_spends(cal);
		ms = hash_search(*spends, &e->key, HASH_FIND, NULL);
		v[10] = ai_money_to_numeric(ai_money_add(ms ? ms->spend : 0, ai_inflight_cost(e)));
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
}

/*
 * ai_account_status() (1.8): one row per account of this database with
 * counters in shared memory: the estimates its members' requests in flight
 * hold there, and the records in flight filed under it or below it.
 */
PG_FUNCTION_INFO_V1(ai_account_status);

typedef struct AiAccountRow
{
	char		id[AI_ID_PREFIX_LEN + 1];
	int32		nresv;
	AiMoney		reserved;
	uint32		inflight;
	AiMoney		inflight_cost;
} AiAccountRow;

/*
 * Take partition p's lock (shared) with room in *buf for every entry it
 * holds: the buffer grows before the lock is taken, never under it.
 */
static void
ai_lock_partition_with_room(int p, void **buf, int32 *max, Size elem)
{
	for (;;)
	{
		if (*buf == NULL || *max < ai_table->part_count[p])
		{
			*max = Max(ai_table->part_count[p] + 64, *max * 2);
			*buf = *buf ? repalloc_huge(*buf, elem * *max)
				: palloc_extended(elem * *max, MCXT_ALLOC_HUGE);
		}
		LWLockAcquire(ai_partition_lock_at(p), LW_SHARED);
		if (ai_table->part_count[p] <= *max)
			return;
		LWLockRelease(ai_partition_lock_at(p));
	}
}

Datum
ai_account_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	AiAccountRow *batch = NULL;
	int32		max = 0;

	ai_call_start();
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		AiPartIter	it;
		AiEntry    *e;
		int			n = 0;

		ai_lock_partition_with_room(p, (void **) &batch, &max, sizeof(AiAccountRow));
		ai_part_iter_init(&it, p);
		while ((e = ai_part_iter_next(&it)) != NULL)
		{
			AiAccountRow *r = &batch[n];

			if (e->key.dbid != MyDatabaseId || e->kind != AI_ENTRY_ACCOUNT)
				continue;
			memset(r->id, 0, sizeof(r->id));
			memcpy(r->id, e->id_prefix, Min(e->id_len, AI_ID_PREFIX_LEN));
			r->reserved = ai_resv_held(e, now, &r->nresv);
			r->inflight = e->inflight;
			r->inflight_cost = ai_inflight_cost(e);
			n++;
		}
		LWLockRelease(ai_partition_lock_at(p));
		for (int i = 0; i < n; i++)
		{
			Datum		v[5];
			bool		nl[5] = {0};

			v[0] = CStringGetTextDatum(batch[i].id);
			v[1] = Int32GetDatum(batch[i].nresv);
			v[2] = ai_money_to_numeric(batch[i].reserved);
			v[3] = Int64GetDatum((int64) batch[i].inflight);
			v[4] = ai_money_to_numeric(batch[i].inflight_cost);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
		}
	}
	return (Datum) 0;
}

/*
 * ai_ratelimit_status(): one row per user of this database with counters in
 * shared memory.  Copies the entries of one partition at a time under its
 * lock (shared), then builds that partition's rows without locks.
 */
Datum
ai_ratelimit_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz now = GetCurrentTimestamp();
	AiCalendar	cal;
	AiStatusCopy *copy = NULL;
	int32		max = 0;
	HTAB	   *spends = NULL;

	ai_call_start();
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	ai_calendar_at(now, &cal);

	for (int p = 0; p < AI_NUM_PARTITIONS; p++)
	{
		AiPartIter	it;
		AiEntry    *e;
		int32		n = 0;

		ai_lock_partition_with_room(p, (void **) &copy, &max, sizeof(AiStatusCopy));
		ai_part_iter_init(&it, p);
		while ((e = ai_part_iter_next(&it)) != NULL)
		{
			if (e->key.dbid != MyDatabaseId || !AI_ENTRY_IS_USER(e))
				continue;		/* a rule's or an account's counters show elsewhere */
			copy[n].e = *e;
			/* reservations live outside the entry: count the open ones now */
			copy[n].reserved = ai_resv_held(e, now, &copy[n].nresv);
			n++;
		}
		LWLockRelease(ai_partition_lock_at(p));
		for (int32 i = 0; i < n; i++)
			ai_status_row(rsinfo, &copy[i], now, &cal, &spends);
	}
	return (Datum) 0;
}

/*
 * ai_ratelimit_stats(): requests by plan and outcome in this database since
 * the last reset, and the capacity events of the whole server.
 */
Datum
ai_ratelimit_stats(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TimestampTz since;
	int			nstats;

	ai_call_start();
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);

	LWLockAcquire(ai_shared->stats_lock, LW_SHARED);
	since = ai_shared->stats_reset;
	nstats = ai_shared->nstats;
	LWLockRelease(ai_shared->stats_lock);

	for (int i = 0; i < nstats; i++)
	{
		AiStats    *st = &ai_stats[i];

		if (i != AI_STATS_OVERFLOW && st->dbid != MyDatabaseId)
			continue;
		for (int o = 0; o < AI_OUT_COUNT; o++)
		{
			uint64		cnt = pg_atomic_read_u64(&st->count[o]);
			Datum		v[4];
			bool		nl[4] = {0};

			if (cnt == 0)
				continue;
			if (i == AI_STATS_OVERFLOW)
				nl[0] = true;
			else
				v[0] = CStringGetTextDatum(st->plan);
			if (ai_outcome_name(o))
				v[1] = CStringGetTextDatum(ai_outcome_name(o));
			else
				nl[1] = true;
			v[2] = Int64GetDatum((int64) cnt);
			v[3] = TimestampTzGetDatum(since);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
		}
	}
	/*
	 * Events of no plan: counters reclaimed, requests met with a full hash,
	 * records that named a reservation no longer open (late: counted in
	 * full), and records of a reservation recorded before (repeated:
	 * nothing stored or charged)
	 */
	for (int k = 0; k < 5; k++)
	{
		static const char *const names[] = {"evicted", "full", "late_record", "repeated_record",
		"misnamed_record"};
		pg_atomic_uint64 *const counts[] = {&ai_shared->evictions, &ai_shared->full_refusals,
		&ai_shared->late_records, &ai_shared->repeated_records, &ai_shared->misnamed_records};
		Datum		v[4];
		bool		nl[4] = {true, false, false, false};

		v[1] = CStringGetTextDatum(names[k]);
		v[2] = Int64GetDatum((int64) pg_atomic_read_u64(counts[k]));
		v[3] = TimestampTzGetDatum(since);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, nl);
	}
	return (Datum) 0;
}

/* ai_ratelimit_reset_stats(): start the counts of ai_ratelimit_stats over */
Datum
ai_ratelimit_reset_stats(PG_FUNCTION_ARGS)
{
	ai_call_start();
	ai_stats_reset();
	PG_RETURN_VOID();
}

/*
 * ai_ratelimit_saves(): the last good save of the counters, the failures,
 * the last time counters went to the WAL, the saver process (NULL when it
 * is not running), when it started and how often, and when the reservation
 * id ceiling was last saved.  A 1.3 definition asks for the first two.
 */
Datum
ai_ratelimit_saves(PG_FUNCTION_ARGS)
{
	TupleDesc	td;
	Datum		values[7];
	bool		nulls[7] = {0};
	TimestampTz times[4];
	uint32		pid;

	ai_call_start();
	if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "ai_ratelimit_saves must return a composite type");
	if (td->natts != 2 && td->natts != 7)
		elog(ERROR, "ai_ratelimit_saves: result type has %d columns", td->natts);
	td = BlessTupleDesc(td);
	times[0] = (TimestampTz) pg_atomic_read_u64(&ai_shared->last_save);
	times[1] = (TimestampTz) pg_atomic_read_u64(&ai_shared->last_wal);
	times[2] = (TimestampTz) pg_atomic_read_u64(&ai_shared->saver_started);
	times[3] = (TimestampTz) pg_atomic_read_u64(&ai_shared->ids_saved_at);
	pid = pg_atomic_read_u32(&ai_shared->saver_pid);

	values[0] = TimestampTzGetDatum(times[0]);
	nulls[0] = (times[0] == 0);
	values[1] = Int64GetDatum((int64) pg_atomic_read_u64(&ai_shared->save_failures));
	values[2] = TimestampTzGetDatum(times[1]);
	nulls[2] = (times[1] == 0);
	values[3] = Int32GetDatum((int32) pid);
	nulls[3] = (pid == 0);
	values[4] = TimestampTzGetDatum(times[2]);
	nulls[4] = (times[2] == 0);
	values[5] = Int32GetDatum((int32) pg_atomic_read_u32(&ai_shared->saver_starts));
	values[6] = TimestampTzGetDatum(times[3]);
	nulls[6] = (times[3] == 0);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(td, values, nulls)));
}

/*-------------------------------------------------------------------------
 *
 * money.c
 *		Exact money for the shared counters.
 *
 * Costs are numeric in SQL.  In shared memory they are int64 counts of
 * 1e-9 cent.  Prices carry at most 5 decimals of US dollars per million
 * tokens (a CHECK constraint on ai_model_prices), so the cost of one call,
 * tokens * price / 10^4 cents, is always a whole number of units: shared
 * counters add up exactly what the ai_usage table adds up.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"


#include "common/int.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "base.h"
#include "money.h"
#include "settings.h"

/*
 * numeric cents -> units.  round_up rounds a fraction of a unit up (for
 * estimates), else down (for budgets).  Amounts beyond AI_MONEY_MAX
 * saturate: no budget or estimate that large can be met anyway.
 * `what` names the value in error messages.
 */
AiMoney
ai_money_from_numeric(Datum num, bool round_up, const char *what)
{
	static Datum zero = (Datum) 0;
	Numeric		n = DatumGetNumeric(num);
	Datum		scaled;
	Datum		limit;
	int			sign;

	if (numeric_is_nan(n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be NaN", what)));
	if (numeric_is_inf(n))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s must be finite", what)));
	if (zero == (Datum) 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		zero = DirectFunctionCall1(int4_numeric, Int32GetDatum(0));
		MemoryContextSwitchTo(old);
	}
	sign = DatumGetInt32(DirectFunctionCall2(numeric_cmp, num, zero));
	if (sign < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", what)));
	if (sign == 0)
		return 0;				/* the common default estimate */

	scaled = DirectFunctionCall2(numeric_mul, num,
								 DirectFunctionCall1(int8_numeric,
													 Int64GetDatum(AI_MONEY_UNITS_PER_CENT)));
	scaled = round_up ? DirectFunctionCall1(numeric_ceil, scaled)
		: DirectFunctionCall1(numeric_floor, scaled);
	limit = DirectFunctionCall1(int8_numeric, Int64GetDatum(AI_MONEY_MAX));
	if (DatumGetBool(DirectFunctionCall2(numeric_ge, scaled, limit)))
		return AI_MONEY_MAX;
	return DatumGetInt64(DirectFunctionCall1(numeric_int8, scaled));
}

/* units -> numeric cents, without trailing zeros (exact). */
Datum
ai_money_to_numeric(AiMoney m)
{
	/* m / 10^9, then the display scale the digits need, as numeric_in gives */
	StaticAssertStmt(AI_MONEY_UNITS_PER_CENT == INT64CONST(1000000000),
					 "ai_money_to_numeric assumes 10^9 units per cent");
	return DirectFunctionCall1(numeric_trim_scale,
							   NumericGetDatum(int64_div_fast_to_numeric(m, 9)));
}

/* a + b, saturating at AI_MONEY_MAX (never wraps into a smaller spend). */
AiMoney
ai_money_add(AiMoney a, AiMoney b)
{
	AiMoney		r;

	if (pg_add_s64_overflow(a, b, &r))
		return (b > 0) ? AI_MONEY_MAX : PG_INT64_MIN;
	return r;
}

/*
 * pct percent of an amount (pct >= 0), rounded down, exact for every
 * amount and percent: AI_MONEY_MAX when it does not fit.
 */
AiMoney
ai_money_percent(AiMoney m, int32 pct)
{
	INT128		t = int64_to_int128(0);

	if (m <= 0 || pct <= 0)
		return 0;
	/* m * pct / 100 = (m / 100) * pct + (m % 100) * pct / 100 */
	int128_add_int64_mul_int64(&t, m / 100, pct);
	int128_add_int64(&t, (m % 100) * (int64) pct / 100);
	if (int128_compare(t, int64_to_int128(AI_MONEY_MAX)) >= 0)
		return AI_MONEY_MAX;
	return int128_to_int64(t);
}

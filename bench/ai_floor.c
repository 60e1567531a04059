/*
 * ai_floor: the floor of a limiter call for the ai_ratelimit benchmark.
 *
 * A C function with exactly ai_check_limit's signature and result type that
 * does nothing: it returns the row of an allowed request with constant
 * values.  Whatever the benchmark measures above it is the limiter's work.
 * ai_floor answers allowed and every other column NULL; ai_floor_row the
 * columns an allowed check of bench/run's plans fills (remaining, reset_at
 * and the two RateLimit fields), with constant values of the same sizes,
 * so that PostgreSQL's output of those columns costs the same as a check's.
 * Built by bench/run, never installed with the extension.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(ai_floor);
PG_FUNCTION_INFO_V1(ai_floor_row);

/* The function's result type, blessed once into *desc. */
static TupleDesc
floor_desc(FunctionCallInfo fcinfo, TupleDesc *desc)
{
	if (*desc == NULL)
	{
		TupleDesc	td;
		MemoryContext old;

		if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "a floor function must return a composite type");
		old = MemoryContextSwitchTo(TopMemoryContext);
		*desc = BlessTupleDesc(CreateTupleDescCopy(td));
		MemoryContextSwitchTo(old);
	}
	return *desc;
}

Datum
ai_floor(PG_FUNCTION_ARGS)
{
	static TupleDesc desc = NULL;
	Datum		values[16] = {0};
	bool		nulls[16];

	floor_desc(fcinfo, &desc);
	if (desc->natts > (int) lengthof(values))
		elog(ERROR, "ai_floor: the result type has %d columns", desc->natts);
	/* allowed, every other column NULL, whatever the release's column count */
	memset(nulls, true, sizeof(nulls));
	nulls[0] = false;
	values[0] = BoolGetDatum(true);
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

Datum
ai_floor_row(PG_FUNCTION_ARGS)
{
	static TupleDesc desc = NULL;
	static Datum ratelimit = 0;
	static Datum policy = 0;
	Datum		values[16] = {0};
	bool		nulls[16];

	floor_desc(fcinfo, &desc);
	if (desc->natts != 13)
		elog(ERROR, "ai_floor_row: the result type has %d columns, not 13", desc->natts);
	if (ratelimit == 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		ratelimit = CStringGetTextDatum("\"daily\";r=2147483641;t=40521");
		policy = CStringGetTextDatum("\"daily\";q=2147483647;w=86400");
		MemoryContextSwitchTo(old);
	}
	memset(nulls, true, sizeof(nulls));
	nulls[0] = nulls[3] = nulls[5] = nulls[11] = nulls[12] = false;
	values[0] = BoolGetDatum(true);
	values[3] = Int32GetDatum(2147483641);	/* remaining */
	values[5] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp() + 40521 * USECS_PER_SEC);
	values[11] = ratelimit;
	values[12] = policy;
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

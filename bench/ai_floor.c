/*
 * ai_floor: the floor of a limiter call for the ai_ratelimit benchmark.
 *
 * A C function with exactly ai_check_limit's signature and result type that
 * does nothing: it returns the row of an allowed request with constant
 * values.  Whatever the benchmark measures above it is the limiter's work.
 * Built by bench/run, never installed with the extension.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "funcapi.h"
#include "utils/memutils.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(ai_floor);

Datum
ai_floor(PG_FUNCTION_ARGS)
{
	static TupleDesc desc = NULL;
	Datum		values[16] = {0};
	bool		nulls[16];

	if (desc == NULL)
	{
		TupleDesc	td;
		MemoryContext old;

		if (get_call_result_type(fcinfo, NULL, &td) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "ai_floor must return a composite type");
		old = MemoryContextSwitchTo(TopMemoryContext);
		desc = BlessTupleDesc(CreateTupleDescCopy(td));
		MemoryContextSwitchTo(old);
	}
	if (desc->natts > (int) lengthof(values))
		elog(ERROR, "ai_floor: the result type has %d columns", desc->natts);
	/* allowed, every other column NULL, whatever the release's column count */
	memset(nulls, true, sizeof(nulls));
	nulls[0] = false;
	values[0] = BoolGetDatum(true);
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

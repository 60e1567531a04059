/*-------------------------------------------------------------------------
 *
 * extension.h
 *		The extension in the current database, and how ai_ratelimit runs
 *		its own queries and describes its background workers (extension.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_EXTENSION_H_
#define AI_EXTENSION_H_

#include "postmaster/bgworker.h"

#include "base.h"
#include "money.h"
#include "settings.h"

/* What ai_internal_begin() or ai_as_owner_begin() changed, to undo it. */
typedef struct AiInternalState
{
	Oid			save_userid;
	int			save_sec;
	int			nestlevel;
} AiInternalState;

/* A prepared plan kept for the backend's life (ai_kept_plan). */
typedef struct AiKeptPlan
{
	void	   *plan;			/* SPIPlanPtr */
	char	   *sql;			/* the text it was prepared from */
} AiKeptPlan;

extern void ai_load_extension_info(void);
extern const char *ai_ext_schema(void);
extern Oid	ai_ext_owner(void);
extern bool ai_ext_has_user_limits(void);
extern Oid	ai_ext_relid(const char *name);
extern bool ai_ext_has_relation(const char *name);
extern bool ai_ext_has_column(const char *rel, const char *column);
extern void ai_internal_begin(AiInternalState *st);
extern void ai_internal_end(AiInternalState *st);
extern void ai_as_owner_begin(AiInternalState *st);
extern void ai_as_owner_end(AiInternalState *st);
extern void *ai_kept_plan(AiKeptPlan *kp, const char *sql, int nargs, Oid *types);
extern void ai_worker_describe(BackgroundWorker *w, int flags, BgWorkerStartTime start,
							   int restart, const char *function, const char *name);
extern void ai_spi_read(const char *sql, int nargs, Oid *types, Datum *values);
extern bool ai_spi_col(HeapTuple tup, TupleDesc td, int col, Datum *d);
extern int	ai_spi_percents(HeapTuple tup, TupleDesc td, int col, int32 *out, int max);
extern void *ai_rows_grow(void *rows, int n, int *maxrows, Size size, MemoryContext cxt);
extern void ai_spi_each_row(const char *sql, void (*fn) (HeapTuple tup, TupleDesc td));

#endif							/* AI_EXTENSION_H_ */

/*-------------------------------------------------------------------------
 *
 * compact.h
 *		The extension's own ai_compact_usage(): every
 *		ai_ratelimit.compact_interval, a worker totals the usage of each
 *		database that checks or records (compact.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_COMPACT_H
#define AI_COMPACT_H

#include "postgres.h"

#include "datatype/timestamp.h"

extern Size ai_compact_shmem_size(void);
extern void ai_compact_shmem_init(void);
extern void ai_compact_note_database(void);
extern void ai_compact_forget_database(Oid dbid);
extern void ai_compact_tick(TimestampTz now);
extern PGDLLEXPORT void ai_compact_worker_main(Datum arg);

#endif							/* AI_COMPACT_H */

/*-------------------------------------------------------------------------
 *
 * ai_replica.h
 *		Where a call may run, and the resource manager of ai_ratelimit (replica.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_REPLICA_H_
#define AI_REPLICA_H_

#include "ai_ratelimit.h"
#include "access/rmgr.h"

/*
 * PostgreSQL's id for extensions that have not reserved one of their own
 * (https://wiki.postgresql.org/wiki/CustomWALResourceManagers); another
 * preloaded library that registers it too makes the server refuse to start.
 */
#define AI_RMGR_ID				RM_EXPERIMENTAL_ID

/* The kinds of record: replica.c redoes both, resvid.c writes the second. */
#define XLOG_AI_SAVE			0x00	/* entries, reservations, tombstones */
#define XLOG_AI_IDS				0x10	/* a reservation id ceiling (resvid.c) */

/* replica.c */
extern void ai_register_rmgr(void);
extern bool ai_on_primary;
extern void ai_require_primary_slow(const char *func);

/*
 * Every function that counts, consumes or resets calls this first: it
 * fails on a standby (25006).  A session that has seen a primary once never
 * sees a standby again (a primary does not go back into recovery).
 */
static inline void
ai_require_primary(const char *func)
{
	if (likely(ai_on_primary))
		return;
	ai_require_primary_slow(func);
}

#endif							/* AI_REPLICA_H_ */

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

extern void ai_ids_wal_log(int64 ceiling_ms);

#endif							/* AI_REPLICA_H_ */

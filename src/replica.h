/*-------------------------------------------------------------------------
 *
 * replica.h
 *		Where a call may run, and the resource manager of ai_ratelimit (replica.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_REPLICA_H_
#define AI_REPLICA_H_

#include "base.h"
#include "money.h"
#include "settings.h"
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
#define XLOG_AI_RESV			0x20	/* a reservation made or extended (1.9) */
#define XLOG_AI_RESV_END		0x30	/* a reservation released (1.9) */

/* replica.c */
extern void ai_register_rmgr(void);

/*
 * Reservations in the WAL (1.9): a check's reservation is logged when it
 * is made, and flushed when its transaction commits (ai_wal_resv_flush).
 */
struct AiKey;
struct AiReservation;
struct AiUser;
extern void ai_wal_log_resv(const struct AiReservation *r, const struct AiUser *user,
							const struct AiUser *const *accounts, int naccounts);
extern void ai_wal_log_resv_end(int64 id, const struct AiKey *owner);
extern void ai_wal_resv_flush(void);
extern void ai_wal_resv_forget(void);
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

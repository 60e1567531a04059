/*-------------------------------------------------------------------------
 *
 * base.h
 *		What every module of ai_ratelimit shares: bounds on input, and how
 *		a transaction ended.  Money is in money.h, the settings in
 *		settings.h.
 *
 * Each module below has its own header, named after it (shmem.c,
 * shmem.h); the layout of the saved counters (saved.h) is for persist.c,
 * replica.c and saved.c alone.
 *
 * The extension is split by concern:
 *   ai_ratelimit.c  module load: defines the settings, installs the
 *                   shared-memory hooks, calls each module's init
 *   settings.c      the settings' values, read by every module
 *   shmem.c         the partitioned table of counters, with its locking
 *                   rules
 *   sweep.c         an entry's life in that table: what keeps it, the
 *                   sweeps that reclaim the rest, forgetting a database;
 *                   a holder's stamps
 *   reservations.c  the reservation pool (its own shared memory) and its
 *                   index of ids
 *   resvid.c        reservation ids: made so that no server of a cluster
 *                   ever issues one twice; their durable ceiling
 *   persist.c       saving the counters to disk and loading them at start;
 *                   the background worker that saves
 *   guard.c         the worker that holds each checkpoint until the
 *                   counters are saved past its redo point
 *   replica.c       the counters in the WAL, for standbys; what runs where
 *   saved.c         applying saved counters: from the files, from the WAL
 *   stats.c         counts of allowed and refused requests per plan
 *   calendar.c      the calendar day and month in ai_ratelimit.timezone;
 *                   the table of windows a rule counts over
 *   rings.c         the counters of a window, taken and given back: sliding
 *                   windows cut into buckets (burst, tokens per minute),
 *                   and the count of a calendar window
 *   money.c         exact fixed-point money (1e-9 cent units) <-> numeric
 *   extension.c     the extension in this database; how our own queries
 *                   run (as its owner, search_path pinned, kept plans)
 *   config.c        backend-local caches of ai_plans and ai_model_prices,
 *                   read again after a relcache invalidation of the table
 *   triggers.c      the trigger on the configuration tables; DROP EXTENSION
 *   users.c         per-user configuration (ai_user_plans, ai_user_limits,
 *                   memberships), looked up and invalidated one user at a time
 *   accounts.c      the account tree: the chain a check charges, an
 *                   account's subtree, its alert thresholds; how shared
 *                   budgets are enforced
 *   xact.c          what a check or record took, given back on abort
 *   alerts.c        budget alerts: their rows and notifications
 *   compact.c       the worker that totals each database's closed days
 *   decide.c        the decision, layer by layer: block, burst, daily,
 *                   tokens per minute, monthly budget, then the rules of
 *                   the user and of every account charged, under one set
 *                   of locks
 *   rules.c         ai_rules: the backend's cache of rules, which bind a
 *                   check (by plan, user, member, account and model)
 *   rulestate.c     a rule's counters for one user or account: requests,
 *                   tokens and cents per window, held, charged and given
 *                   back; account alerts
 *   spend.c         the one loader of a cached use from the tables, and a
 *                   user's monthly spend, cached exact; the query that sums
 *                   a window from totals and log
 *   usage.c         ai_record_usage: cost, usage row, shared counters; the
 *                   marks of days changed, and which records are open
 *   sql_api.c       the SQL-callable functions
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_BASE_H
#define AI_BASE_H

#include "postgres.h"

#include "datatype/timestamp.h"
#include "access/htup.h"
#include "access/xact.h"
#include "access/tupdesc.h"
#include "common/int128.h"
#include "fmgr.h"
#include "nodes/pg_list.h"
#include "pgtime.h"
#include "port/atomics.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/date.h"
#include "utils/hsearch.h"

/* ---- limits on input ---- */
#define AI_MAX_USER_ID_LEN		256		/* bytes */
#define AI_MAX_MODEL_LEN		256		/* bytes */
#define AI_MAX_TOKENS			INT64CONST(1000000000)	/* per count, per call */

/*
 * Burst window: the window is cut into AI_BURST_SPAN buckets of equal width
 * g = ceil(W / SPAN).  A window ending now overlaps at most SPAN + 2 buckets
 * (floor(t/g) - floor((t - W)/g) <= SPAN + 1), so a ring of SPAN + 2 keeps
 * every bucket that can still count.
 */
#define AI_BURST_SPAN			20
#define AI_BURST_RING			22

/*
 * Tokens per minute: the minute is cut into 3 buckets of 20 s, counted the
 * same conservative way as the burst window (a window ending now overlaps at
 * most 4 of them).
 */
#define AI_TOKEN_BUCKET_SECS	20
#define AI_TOKEN_SPAN			3
#define AI_TOKEN_RING			4

/*
 * How a transaction ended, for the transaction callback that each module
 * registers for its own state (PREPARE ends the backend's part as an abort
 * does: xact.c refuses to prepare a transaction holding charges).
 */
typedef enum AiXactEnd
{
	AI_XACT_NONE,				/* not an end */
	AI_XACT_COMMIT,
	AI_XACT_ABORT
} AiXactEnd;

static inline AiXactEnd
ai_xact_end_of(XactEvent event)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			return AI_XACT_COMMIT;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			return AI_XACT_ABORT;
		default:
			return AI_XACT_NONE;
	}
}

#endif							/* AI_BASE_H */

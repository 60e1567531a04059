/*-------------------------------------------------------------------------
 *
 * stats.c
 *		Counts of allowed and refused requests per database and plan, for
 *		the view ai_ratelimit_stats.
 *
 * A fixed array of AI_MAX_STATS slots in shared memory.  Adding a plan's
 * slot takes stats_lock exclusively; counters are atomics, so a check adds
 * to them without a lock.  Backends keep a pointer to their plan's slot in
 * the plan cache (config.c).  Slots are never removed, only zeroed by
 * ai_ratelimit_reset_stats(), so those pointers stay valid.  When the array
 * is full, further plans share slot AI_STATS_OVERFLOW, shown as plan NULL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "shmem.h"
#include "stats.h"

AiStats    *ai_stats = NULL;

static const char *const outcome_names[AI_OUT_COUNT] = {
	NULL, "burst", "daily", "monthly_budget", "tokens", "blocked", "rule", "account", "member"
};

const char *
ai_outcome_name(AiOutcome o)
{
	return outcome_names[o];
}

Size
ai_stats_size(void)
{
	return mul_size(AI_MAX_STATS, sizeof(AiStats));
}

/* Called from ai_shmem_startup under AddinShmemInitLock. */
void
ai_stats_init(bool found)
{
	bool		stats_found;

	ai_stats = ShmemInitStruct("ai_ratelimit stats", ai_stats_size(), &stats_found);
	if (!stats_found)
	{
		memset(ai_stats, 0, ai_stats_size());
		for (int i = 0; i < AI_MAX_STATS; i++)
			for (int o = 0; o < AI_OUT_COUNT; o++)
				pg_atomic_init_u64(&ai_stats[i].count[o], 0);
		ai_shared->nstats = AI_STATS_OVERFLOW + 1;
		ai_shared->stats_reset = GetCurrentTimestamp();
	}
}

/* The slot of a plan in the current database, made if need be. */
AiStats *
ai_stats_for(const char *plan)
{
	AiStats    *found = NULL;

	LWLockAcquire(ai_shared->stats_lock, LW_EXCLUSIVE);
	for (int i = AI_STATS_OVERFLOW + 1; i < ai_shared->nstats; i++)
		if (ai_stats[i].dbid == MyDatabaseId && strcmp(ai_stats[i].plan, plan) == 0)
		{
			found = &ai_stats[i];
			break;
		}
	if (found == NULL)
	{
		if (ai_shared->nstats < AI_MAX_STATS)
		{
			found = &ai_stats[ai_shared->nstats];
			found->dbid = MyDatabaseId;
			strlcpy(found->plan, plan, sizeof(found->plan));
			ai_shared->nstats++;
		}
		else
			found = &ai_stats[AI_STATS_OVERFLOW];
	}
	LWLockRelease(ai_shared->stats_lock);
	return found;
}

/* Zero every counter, the capacity events included. */
void
ai_stats_reset(void)
{
	LWLockAcquire(ai_shared->stats_lock, LW_EXCLUSIVE);
	for (int i = 0; i < ai_shared->nstats; i++)
		for (int o = 0; o < AI_OUT_COUNT; o++)
			pg_atomic_write_u64(&ai_stats[i].count[o], 0);
	pg_atomic_write_u64(&ai_shared->evictions, 0);
	pg_atomic_write_u64(&ai_shared->full_refusals, 0);
	pg_atomic_write_u64(&ai_shared->late_records, 0);
	pg_atomic_write_u64(&ai_shared->repeated_records, 0);
	pg_atomic_write_u64(&ai_shared->misnamed_records, 0);
	ai_shared->stats_reset = GetCurrentTimestamp();
	LWLockRelease(ai_shared->stats_lock);
}

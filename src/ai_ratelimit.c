/*-------------------------------------------------------------------------
 *
 * ai_ratelimit.c
 *		Module load: defines the settings (their values live in settings.c),
 *		installs the shared-memory hooks, calls each module's init.
 *
 * ai_ratelimit must be in shared_preload_libraries: its counters live in
 * shared memory requested at postmaster start.  Loaded any other way, the
 * GUCs exist but every function refuses with SQLSTATE 55000.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "alerts.h"
#include "compact.h"
#include "config.h"
#include "guard.h"
#include "persist.h"
#include "replica.h"
#include "reservations.h"
#include "resvid.h"
#include "shmem.h"
#include "spend.h"
#include "triggers.h"
#include "usage.h"
#include "users.h"
#include "xact.h"

PG_MODULE_MAGIC;

static const struct config_enum_entry on_full_options[] = {
	{"refuse", AI_ON_FULL_REFUSE, false},
	{"allow", AI_ON_FULL_ALLOW, false},
	{NULL, 0, false}
};

static const struct config_enum_entry unknown_model_options[] = {
	{"warn", AI_UNKNOWN_MODEL_WARN, false},
	{"refuse", AI_UNKNOWN_MODEL_REFUSE, false},
	{NULL, 0, false}
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

static bool
ai_timezone_check(char **newval, void **extra, GucSource source)
{
	pg_tz	   *tz = pg_tzset(*newval);

	if (tz == NULL)
	{
		GUC_check_errdetail("Time zone \"%s\" is not recognized.", *newval);
		return false;
	}
	/* GUC frees extra itself: since 16 it must come from guc_malloc */
#if PG_VERSION_NUM >= 160000
	*extra = guc_malloc(LOG, sizeof(pg_tz *));
#else
	*extra = malloc(sizeof(pg_tz *));
#endif
	if (*extra == NULL)
		return false;
	*((pg_tz **) *extra) = tz;
	return true;
}

/*
 * A new zone: the day a record is labelled with changes with it.  Every
 * process that sees the change says when (the latest wins), for the
 * ai_compact_usage() of databases still on 1.6, which keeps two more days
 * out after a change; 1.7's keeps the last three days open whatever the
 * zone, and needs no such time.
 */
static void
ai_timezone_assign(const char *newval, void *extra)
{
	pg_tz	   *tz = *((pg_tz **) extra);

	if (ai_timezone != NULL && tz != ai_timezone && ai_shared != NULL)
	{
		TimestampTz now = GetCurrentTimestamp();
		uint64		seen = pg_atomic_read_u64(&ai_shared->tz_changed_at);

		while ((uint64) now > seen &&
			   !pg_atomic_compare_exchange_u64(&ai_shared->tz_changed_at, &seen, (uint64) now))
			;
	}
	ai_timezone = tz;
}

static void
ai_shmem_request_hook(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	ai_shmem_request();
	RequestAddinShmemSpace(ai_open_records_size());
	RequestAddinShmemSpace(ai_alert_queue_size());
	RequestAddinShmemSpace(ai_compact_shmem_size());
	RequestAddinShmemSpace(ai_resv_shmem_size());
	RequestAddinShmemSpace(ai_guard_shmem_size());
}

static void
ai_shmem_startup_hook(void)
{
	bool		created;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	created = ai_shmem_startup();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	ai_open_records_init();
	ai_alert_queue_init();
	ai_compact_shmem_init();
	ai_resv_shmem_init();
	ai_guard_shmem_init();
	LWLockRelease(AddinShmemInitLock);

	/*
	 * In the postmaster: restore the saved counters into new shared memory
	 * (at start, and after a crash), and save them at a clean shutdown.
	 */
	if (!IsUnderPostmaster)
	{
		if (created)
		{
			ai_ids_load();
			ai_load();
		}
		on_shmem_exit(ai_save_at_exit, (Datum) 0);
	}
}

void
_PG_init(void)
{
	DefineCustomStringVariable("ai_ratelimit.timezone",
							   "Time zone of the daily and monthly windows.",
							   "Days reset at midnight and months on the 1st in this zone.",
							   &ai_timezone_name, "UTC",
							   PGC_SIGHUP, 0,
							   ai_timezone_check, ai_timezone_assign, NULL);
	DefineCustomIntVariable("ai_ratelimit.reservation_ttl",
							"How long an unsettled budget reservation is held.",
							NULL,
							&ai_reservation_ttl, 900, 1, 31 * 86400,
							PGC_SUSET, GUC_UNIT_S, NULL, NULL, NULL);
	DefineCustomEnumVariable("ai_ratelimit.on_full",
							 "What a check does when every counter is in use: refuse or allow.",
							 NULL,
							 &ai_on_full, AI_ON_FULL_REFUSE, on_full_options,
							 PGC_SIGHUP, 0, NULL, NULL, NULL);
	DefineCustomEnumVariable("ai_ratelimit.unknown_model",
							 "What ai_record_usage does with a model that has no price: warn (and price it by the '*' row) or refuse.",
							 NULL,
							 &ai_unknown_model, AI_UNKNOWN_MODEL_WARN, unknown_model_options,
							 PGC_SUSET, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ai_ratelimit.user_cache_size",
							"Users whose ai_user_plans and ai_user_limits rows a session keeps cached.",
							"About 100 bytes each; when full, an eighth is dropped.",
							&ai_user_cache_size, 65536, 1024, 10000000,
							PGC_USERSET, 0, NULL, NULL, NULL);
	ai_config_init();

	/*
	 * Each module ends its own part of a transaction.  PostgreSQL calls the
	 * callbacks newest first, so these run from the last to the first:
	 * xact.c gives back or keeps what the charges took before triggers.c
	 * forgets the counters of a database whose DROP EXTENSION commits; that
	 * asks config.c for bumps and users.c to tell the other backends, so
	 * those two run after it.
	 */
	ai_users_init();
	ai_config_init_xact();
	ai_triggers_init_xact();
	ai_xact_init();
	ai_spend_init();
	ai_usage_init();

	/* without preload there is no shared memory to size or hook */
	if (!process_shared_preload_libraries_in_progress)
	{
		MarkGUCPrefixReserved("ai_ratelimit");
		return;
	}

	DefineCustomIntVariable("ai_ratelimit.max_keys",
							"Users tracked at once in shared memory (all databases).",
							NULL,
							&ai_max_keys, 100000, 100, 50000000,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ai_ratelimit.max_reservations",
							"Budget reservations held at once (all databases).",
							NULL,
							&ai_max_reservations, 100000, 16, AI_RESV_MAX_SLOTS,
							PGC_POSTMASTER, 0, NULL, NULL, NULL);
	DefineCustomIntVariable("ai_ratelimit.save_interval",
							"How often changed counters are saved to disk; 0 saves only at shutdown.",
							"A crash loses at most the counts of this last interval.",
							&ai_save_interval, 1000, 0, 3600000,
							PGC_SIGHUP, GUC_UNIT_MS, NULL, NULL, NULL);
	DefineCustomIntVariable("ai_ratelimit.compact_interval",
							"How often the extension's worker totals each database's usage (ai_compact_usage); 0 turns it off.",
							"Budget loads read totalled days from ai_usage_days and only the rest from ai_usage.",
							&ai_compact_interval, 3600, 0, 7 * 86400,
							PGC_SIGHUP, GUC_UNIT_S, NULL, NULL, NULL);
	MarkGUCPrefixReserved("ai_ratelimit");

	ai_register_saver();
	ai_register_guard();
	ai_register_rmgr();
	ai_triggers_init_hooks();

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = ai_shmem_request_hook;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = ai_shmem_startup_hook;
}

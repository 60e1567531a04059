/*-------------------------------------------------------------------------
 *
 * compact.c
 *		The usage totals kept without a job: every
 *		ai_ratelimit.compact_interval, a short-lived worker connected to
 *		each database that checks or records runs its ai_compact_usage().
 *
 * A budget load reads a user's closed days from ai_usage_days and only the
 * rest from the log, so the first check after a crash costs about the same
 * whatever the user's history -- once the days are totalled.  The first
 * call of a session on a primary notes its database here
 * (ai_compact_note_database); the saver looks every second
 * (ai_compact_tick) and, for a noted database whose last run began (or
 * that was noted) at least an interval ago, starts a worker (two at most
 * at a time) that runs ai_compact_usage() in a
 * transaction of its own at READ COMMITTED, as the bootstrap superuser,
 * and exits.  A database on a script older than 1.6 (no ai_usage_days) is
 * passed over; one whose worker failed three times in a row (an error, the
 * database dropped or the extension gone) is forgotten until a session
 * notes it again.  An
 * operator's own ai_compact_usage() job keeps working beside it: the
 * function takes its lock, so two runs wait for each other.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compact.h"
#include "extension.h"
#include "settings.h"

/* databases whose usage the worker totals */
#define AI_COMPACT_MAX_DBS		256
/* workers running at once, each in one database */
#define AI_COMPACT_MAX_RUNNING	2
/* a database whose worker failed this many times in a row is forgotten */
#define AI_COMPACT_MAX_FAILURES 3

typedef struct AiCompactDb
{
	Oid			dbid;			/* InvalidOid: a free slot */
	bool		running;		/* a worker was started and has not ended */
	int			failures;		/* runs in a row that did not commit */
	TimestampTz last_start;		/* when the last worker was started, or
								 * the database noted */
} AiCompactDb;

typedef struct AiCompactShared
{
	slock_t		mutex;
	bool		full_logged;	/* the "no room" LOG was written */
	AiCompactDb db[AI_COMPACT_MAX_DBS];
} AiCompactShared;

static AiCompactShared *compact = NULL;

/* In the worker: did its run commit? */
static bool compact_committed = false;

/*
 * In the saver: the workers it started, by slot, so that one that never
 * ran (it could not be forked) does not keep its database waiting.
 */
static BackgroundWorkerHandle *handles[AI_COMPACT_MAX_DBS];

Size
ai_compact_shmem_size(void)
{
	return sizeof(AiCompactShared);
}

void
ai_compact_shmem_init(void)
{
	bool		found;

	compact = ShmemInitStruct("ai_ratelimit compaction", sizeof(AiCompactShared), &found);
	if (!found)
	{
		memset(compact, 0, sizeof(AiCompactShared));
		SpinLockInit(&compact->mutex);
	}
}

/* The slot of database dbid, or NULL; the mutex is held. */
static AiCompactDb *
ai_compact_slot(Oid dbid)
{
	for (int i = 0; i < AI_COMPACT_MAX_DBS; i++)
		if (compact->db[i].dbid == dbid)
			return &compact->db[i];
	return NULL;
}

/*
 * This session's database checks or records on a primary: its usage is
 * totalled from now on.  Called once per session (ai_require_primary).
 */
void
ai_compact_note_database(void)
{
	bool		no_room = false;

	if (compact == NULL || !OidIsValid(MyDatabaseId))
		return;
	SpinLockAcquire(&compact->mutex);
	if (ai_compact_slot(MyDatabaseId) == NULL)
	{
		AiCompactDb *free_slot = ai_compact_slot(InvalidOid);

		if (free_slot != NULL)
		{
			memset(free_slot, 0, sizeof(*free_slot));
			free_slot->dbid = MyDatabaseId;
			free_slot->last_start = GetCurrentTimestamp();
		}
		else if (!compact->full_logged)
			no_room = compact->full_logged = true;
	}
	SpinLockRelease(&compact->mutex);
	if (no_room)
		ereport(LOG,
				(errmsg("ai_ratelimit totals the usage of at most %d databases", AI_COMPACT_MAX_DBS),
				 errdetail("The usage of database %u is not totalled by the extension's worker.", MyDatabaseId),
				 errhint("Run ai_compact_usage() in that database from a job of your own.")));
}

/* DROP EXTENSION committed in dbid: nothing there to total. */
void
ai_compact_forget_database(Oid dbid)
{
	AiCompactDb *slot;

	if (compact == NULL)
		return;
	SpinLockAcquire(&compact->mutex);
	if ((slot = ai_compact_slot(dbid)) != NULL && !slot->running)
		slot->dbid = InvalidOid;
	SpinLockRelease(&compact->mutex);
}

/*
 * In the saver, every second on a primary: start a worker for a noted
 * database whose last one began, or that was noted, an interval ago or
 * more, the longest waiting first, while fewer than
 * AI_COMPACT_MAX_RUNNING run.  A worker that cannot start (every
 * background worker slot in use) is tried again at the next tick.
 */
void
ai_compact_tick(TimestampTz now)
{
	if (compact == NULL)
		return;
	/* workers that ended without their exit callback: never forked */
	for (int i = 0; i < AI_COMPACT_MAX_DBS; i++)
	{
		pid_t		pid;

		if (handles[i] == NULL ||
			GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
			continue;
		pfree(handles[i]);
		handles[i] = NULL;
		SpinLockAcquire(&compact->mutex);
		compact->db[i].running = false;
		SpinLockRelease(&compact->mutex);
	}
	for (;;)
	{
		AiCompactDb *next = NULL;
		int			running = 0;
		Oid			dbid;
		TimestampTz was;
		BackgroundWorker w;
		int			slot;

		if (ai_compact_interval <= 0)
			return;
		SpinLockAcquire(&compact->mutex);
		for (int i = 0; i < AI_COMPACT_MAX_DBS; i++)
		{
			AiCompactDb *s = &compact->db[i];

			if (!OidIsValid(s->dbid))
				continue;
			if (s->running)
				running++;
			else if (now - s->last_start >= (int64) ai_compact_interval * USECS_PER_SEC &&
					 (next == NULL || s->last_start < next->last_start))
				next = s;
		}
		if (next == NULL || running >= AI_COMPACT_MAX_RUNNING)
		{
			SpinLockRelease(&compact->mutex);
			return;
		}
		next->running = true;
		was = next->last_start;
		next->last_start = now;
		dbid = next->dbid;
		slot = (int) (next - compact->db);
		SpinLockRelease(&compact->mutex);

		ai_worker_describe(&w, BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION,
						   BgWorkerStart_RecoveryFinished, BGW_NEVER_RESTART,
						   "ai_compact_worker_main", "ai_ratelimit compactor");
		w.bgw_main_arg = ObjectIdGetDatum(dbid);
		w.bgw_notify_pid = 0;
		if (handles[slot] != NULL)
			pfree(handles[slot]);
		handles[slot] = NULL;
		if (!RegisterDynamicBackgroundWorker(&w, &handles[slot]))
		{
			AiCompactDb *s;

			SpinLockAcquire(&compact->mutex);
			if ((s = ai_compact_slot(dbid)) != NULL)
			{
				s->running = false;
				s->last_start = was;
			}
			SpinLockRelease(&compact->mutex);
			return;
		}
	}
}

/* The worker ends, however it ends: its database may be visited again. */
static void
ai_compact_worker_exit(int code, Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	AiCompactDb *s;

	SpinLockAcquire(&compact->mutex);
	if ((s = ai_compact_slot(dbid)) != NULL)
	{
		s->running = false;
		s->failures = compact_committed ? 0 : s->failures + 1;
		if (s->failures >= AI_COMPACT_MAX_FAILURES)
			s->dbid = InvalidOid;
	}
	SpinLockRelease(&compact->mutex);
}

/*
 * The worker: connected to one database, it runs ai_compact_usage() there
 * once, in a transaction of its own at READ COMMITTED, and exits.  An error
 * is logged as the server logs a worker's errors, and counts as a failure.
 */
void
ai_compact_worker_main(Datum arg)
{
	Oid			dbid = DatumGetObjectId(arg);
	bool		has_ext;
	int64		written = -1;

	before_shmem_exit(ai_compact_worker_exit, arg);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dbid, InvalidOid, 0);
	pgstat_report_appname("ai_ratelimit compactor");
	/* ai_compact_usage() runs at READ COMMITTED only */
	SetConfigOption("default_transaction_isolation", "read committed",
					PGC_SUSET, PGC_S_OVERRIDE);
	/* maintenance, as autovacuum: no time limits meant for applications */
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	has_ext = OidIsValid(get_extension_oid("ai_ratelimit", true));
	if (has_ext && ai_ext_has_relation("ai_usage_days"))
	{
		const char *sql = psprintf("SELECT %s.ai_compact_usage()", ai_ext_schema());
		bool		isnull;

		pgstat_report_activity(STATE_RUNNING, sql);
		SPI_connect();
		if (SPI_execute(sql, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "ai_compact_usage() returned no row");
		written = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											  1, &isnull));
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	compact_committed = has_ext;
	if (written >= 0)
		ereport(DEBUG1,
				(errmsg_internal("ai_ratelimit compactor wrote " INT64_FORMAT " totals", written)));
	proc_exit(0);
}

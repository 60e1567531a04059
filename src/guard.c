/*-------------------------------------------------------------------------
 *
 * guard.c
 *		The checkpoint guard: no checkpoint completes before the counters
 *		and reservations are saved past its redo point.
 *
 * Crash recovery replays the WAL from the last checkpoint's redo point on,
 * and the counters come back from the save files plus what the WAL holds
 * after that point.  A reservation logged before a checkpoint's redo point
 * and not yet in the files (the saver writes them every save_interval)
 * would be in neither: a checkpoint, then a crash before the next save,
 * handed its estimate back.
 *
 * PostgreSQL makes a checkpoint wait, after it has chosen its redo point,
 * for every process whose transaction carries DELAY_CHKPT_START, as it
 * does for a commit between its WAL record and its clog update.  The guard
 * is such a process: connected to no database, it holds that flag in an
 * empty transaction at all times.  When the redo point moves, it asks the
 * saver for a save that begins after it (persist.c: to the files, and to
 * the WAL where standbys follow), waits for it, and only then ends its
 * transaction, which lets the checkpoint go on, and holds the flag again
 * in a new one.  The short gap between the two transactions is safe: a
 * checkpoint is in progress then, and no other can begin until it ends.
 * A checkpoint that took the new transaction for one to wait on is let go
 * the same way, until the control file shows it done.
 *
 * A saver that is not running is waited for too: it is started again
 * within seconds, and saves first thing.  But the guard never holds a
 * checkpoint longer than AI_GUARD_WAIT_SECS: one held for ever would fill
 * the disk with WAL.  The shutdown checkpoint comes after the guard has
 * exited; the postmaster then saves everything itself.  A standby's
 * restart points do not wait for anyone; it replays the saves its primary
 * logged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/timestamp.h"

#include "extension.h"
#include "guard.h"

#define AI_GUARD_POLL_MS		10	/* how often the redo point is looked at */
#define AI_GUARD_WAIT_SECS		30	/* the longest a checkpoint is held */
#define AI_GUARD_RESTART_SECS	1

typedef struct AiGuardShared
{
	slock_t		mutex;
	Latch	   *saver;			/* the saver's latch; NULL: it is not running */
	uint64		wanted;			/* saves asked for (a count) */
	uint64		saved;			/* asked for before a save began that ended well */
} AiGuardShared;

static AiGuardShared *guard;

PGDLLEXPORT void ai_guard_main(Datum arg);

Size
ai_guard_shmem_size(void)
{
	return sizeof(AiGuardShared);
}

void
ai_guard_shmem_init(void)
{
	bool		found;

	guard = ShmemInitStruct("ai_ratelimit checkpoint guard", sizeof(AiGuardShared), &found);
	if (!found)
	{
		memset(guard, 0, sizeof(AiGuardShared));
		SpinLockInit(&guard->mutex);
	}
}

void
ai_register_guard(void)
{
	BackgroundWorker worker;

	ai_worker_describe(&worker, BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION,
					   BgWorkerStart_ConsistentState, AI_GUARD_RESTART_SECS,
					   "ai_guard_main", "ai_ratelimit checkpoint guard");
	RegisterBackgroundWorker(&worker);
}

/* ---- the saver's side ---- */

/* The saver starts (its latch) or exits (NULL). */
void
ai_guard_saver_is(Latch *latch)
{
	SpinLockAcquire(&guard->mutex);
	guard->saver = latch;
	SpinLockRelease(&guard->mutex);
}

/* The saves asked for so far, if one is still owed; else 0. */
uint64
ai_guard_wanted(void)
{
	uint64		wanted;

	SpinLockAcquire(&guard->mutex);
	wanted = guard->wanted > guard->saved ? guard->wanted : 0;
	SpinLockRelease(&guard->mutex);
	return wanted;
}

/* A save that began after `wanted` saves were asked for ended well. */
void
ai_guard_saved(uint64 wanted)
{
	SpinLockAcquire(&guard->mutex);
	if (wanted > guard->saved)
		guard->saved = wanted;
	SpinLockRelease(&guard->mutex);
}

/*
 * Ask the saver for a save that begins from now on, and wait until it has
 * ended well (a saver that is not running is waited for: it is started
 * again within seconds, and saves first thing), but never longer than
 * AI_GUARD_WAIT_SECS.  False when this process is asked to stop first.
 */
bool
ai_guard_save_now(void)
{
	TimestampTz give_up = GetCurrentTimestamp() + AI_GUARD_WAIT_SECS * USECS_PER_SEC;
	uint64		ticket;
	Latch	   *saver;

	SpinLockAcquire(&guard->mutex);
	ticket = ++guard->wanted;
	saver = guard->saver;
	SpinLockRelease(&guard->mutex);
	if (saver != NULL)
		SetLatch(saver);
	for (;;)
	{
		uint64		saved;

		SpinLockAcquire(&guard->mutex);
		saved = guard->saved;
		SpinLockRelease(&guard->mutex);
		if (saved >= ticket)
			return true;
		if (GetCurrentTimestamp() >= give_up)
		{
			ereport(WARNING,
					(errmsg("ai_ratelimit let a checkpoint go on before its counters were saved"),
					 errdetail("The saver did not save within %d seconds.", AI_GUARD_WAIT_SECS),
					 errhint("A crash before the next good save may lose the counts and reservations taken before the checkpoint.")));
			return true;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 AI_GUARD_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			return false;
	}
}

/* ---- the guard ---- */

static void
ai_guard_let_go(int code, Datum arg)
{
	if (MyProc != NULL)
		MyProc->delayChkptFlags &= ~DELAY_CHKPT_START;
}

/* A new transaction, holding back the checkpoints that begin from now on. */
static void
ai_guard_hold(void)
{
	StartTransactionCommand();
	pgstat_report_xact_timestamp(0);	/* no transaction to watch for its age */
	MyProc->delayChkptFlags |= DELAY_CHKPT_START;
}

/* Let the checkpoints that wait for this transaction go, and hold again. */
static void
ai_guard_cycle(void)
{
	ai_guard_let_go(0, (Datum) 0);
	CommitTransactionCommand();
	ai_guard_hold();
}

void
ai_guard_main(Datum arg)
{
	XLogRecPtr	covered = InvalidXLogRecPtr;	/* the redo point last saved past */
	int			pause = AI_GUARD_POLL_MS;	/* before letting go again */
	TimestampTz next_cycle = 0;

	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	before_shmem_exit(ai_guard_let_go, (Datum) 0);
	ai_guard_hold();
	while (!ShutdownRequestPending)
	{
		XLogRecPtr	redo = GetRedoRecPtr();
		XLogRecPtr	done;
		TimeLineID	tli;
		TimestampTz now;

		GetOldestRestartPoint(&done, &tli);
		if (redo != covered)
		{
			/* a checkpoint began: it waits for this transaction */
			if (!ai_guard_save_now())
				break;
			covered = redo;
			pause = AI_GUARD_POLL_MS;
			next_cycle = 0;
		}
		now = GetCurrentTimestamp();
		if (redo != done && now >= next_cycle)
		{
			/* it is still in progress: it may wait for this one too */
			ai_guard_cycle();
			next_cycle = now + (TimestampTz) pause * 1000;
			pause = Min(pause * 2, 1000);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 AI_GUARD_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	ai_guard_let_go(0, (Datum) 0);
	proc_exit(1);				/* started again unless the server stops */
}

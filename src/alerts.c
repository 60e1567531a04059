/*-------------------------------------------------------------------------
 *
 * alerts.c
 *		Budget alerts: a row of ai_alerts (a user's monthly budget) or of
 *		ai_account_alerts (a cents rule on an account), once per budget,
 *		window and threshold, and a notification on the channel
 *		ai_ratelimit only when the row is new.
 *
 * A threshold fires when a record brings the budget's use to it or past
 * it, in the recording transaction: it commits or rolls back with the
 * usage, and a rolled-back firing re-arms the threshold for the next
 * record.  The shared bits (AiEntry.alerts_sent) let one transaction at a
 * time fire a threshold, so the insert never waits for another's; the
 * tables' unique constraints keep an alert to one row whatever the bits
 * say, and the bits belong to one list of thresholds (a signature of it is
 * kept with them), so an edit of alert_percents mid-window fires each
 * percent at most once.
 *
 * A spent budget fires too: estimates stop admissions just short of a cap,
 * so the first check a budget refuses in its window writes the 100%
 * ("exhausted") row.  A check must not write in its caller's transaction
 * (ai_enforce_limit's refusal rolls it back), so the refusal is queued in
 * shared memory and a short-lived background worker connected to the
 * database writes it in a transaction of its own.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "alerts.h"
#include "extension.h"

/* ---- thresholds crossed by a record ---- */

#define AI_ALERT_SIG_SHIFT		16
#define AI_ALERT_POSITIONS		0xFFU	/* bits of the thresholds, by position */

/* A signature of a list of thresholds: its bits are theirs only. */
static uint32
ai_alert_signature(const int32 *pct, int npct)
{
	uint32		h = (uint32) npct * 2654435761U;

	for (int k = 0; k < npct; k++)
		h = (h ^ (uint32) pct[k]) * 16777619U;
	return (h ^ (h >> 16)) & 0xFFFFU;
}

/*
 * The thresholds of a budget (pct[npct], percents of budget) that a use of
 * after reaches and that were not fired in the window: their percents into
 * due[], their bits into *bits (set in *sent; the caller gives them back
 * if its transaction rolls back).  Returns how many.  Caller holds the
 * lock of the entry that *sent is in.
 */
int
ai_alerts_due(uint32 *sent, const int32 *pct, int npct, AiMoney budget, AiMoney after,
			  int32 *due, uint32 *bits)
{
	uint32		sig = ai_alert_signature(pct, npct);
	int			n = 0;

	if ((*sent >> AI_ALERT_SIG_SHIFT) != sig)
		*sent = (*sent & AI_ALERT_EXHAUSTED_BIT) | (sig << AI_ALERT_SIG_SHIFT);
	for (int k = 0; k < npct; k++)
	{
		uint32		bit = 1U << k;

		if (pct[k] > 0 && after >= ai_money_percent(budget, pct[k]) && (*sent & bit) == 0)
		{
			*sent |= bit;
			*bits |= bit;
			due[n++] = pct[k];
		}
	}
	return n;
}

/* An alert of a budget of owner (a plan or an account) for user_id, at pct. */
void
ai_alert_init(AiAlert *a, AiAlertKind kind, const char *user_id, int idlen, const char *owner,
			  int32 pct, AiMoney spend, AiMoney budget)
{
	memset(a, 0, sizeof(*a));
	a->kind = kind;
	a->dbid = MyDatabaseId;
	memcpy(a->user_id, user_id, Min(idlen, AI_MAX_USER_ID_LEN));
	strlcpy(a->owner, owner, sizeof(a->owner));
	a->pct = pct;
	a->spend = spend;
	a->budget = budget;
}

/* ---- the rows and their notifications ---- */

static char *
ai_cents_text(AiMoney m)
{
	return DatumGetCString(DirectFunctionCall1(numeric_out, ai_money_to_numeric(m)));
}

/* The notification of a new alert row, sent when its transaction commits. */
static void
ai_alert_notify(const AiAlert *a)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (a->kind == AI_ALERT_PLAN)
	{
		int			y,
					m,
					d;

		j2date(a->month + POSTGRES_EPOCH_JDATE, &y, &m, &d);
		appendStringInfoString(&buf, "{\"event\": \"budget_alert\", \"user_id\": ");
		escape_json(&buf, a->user_id);
		appendStringInfoString(&buf, ", \"plan\": ");
		escape_json(&buf, a->owner);
		appendStringInfo(&buf, ", \"threshold_percent\": %d, \"spend_cents\": %s, \"budget_cents\": %s, \"month\": \"%04d-%02d\"",
						 a->pct, ai_cents_text(a->spend), ai_cents_text(a->budget), y, m);
	}
	else
	{
		appendStringInfoString(&buf, "{\"event\": \"account_budget_alert\", \"account_id\": ");
		escape_json(&buf, a->owner);
		appendStringInfo(&buf, ", \"rule_id\": %d, \"user_id\": ", a->rule_id);
		escape_json(&buf, a->user_id);
		appendStringInfo(&buf, ", \"threshold_percent\": %d, \"spend_cents\": %s, \"budget_cents\": %s, \"window_start\": ",
						 a->pct, ai_cents_text(a->spend), ai_cents_text(a->budget));
		escape_json(&buf, timestamptz_to_str(a->window_start));
	}
	appendStringInfo(&buf, ", \"exhausted\": %s}", a->exhausted ? "true" : "false");
	Async_Notify("ai_ratelimit", buf.data);
}

/*
 * Write alert a as a row (1.4's ai_alerts, 1.8's ai_account_alerts) in the
 * current transaction, as the extension's owner, and notify when the row
 * is new.  Returns whether it was.  A database whose extension has no
 * such table yet writes nothing.
 */
bool
ai_alert_write(const AiAlert *a, TimestampTz now)
{
	static const char *const ins[2] = {
		"INSERT INTO %s.ai_alerts (created_at, user_id, plan, month, threshold_percent,"
		" spend_cents, budget_cents) VALUES ($1, $2, $3, $4, $5, $6, $7)"
		" ON CONFLICT ON CONSTRAINT ai_alerts_once DO NOTHING",
		"INSERT INTO %s.ai_account_alerts (created_at, user_id, account_id, window_start,"
		" threshold_percent, spend_cents, budget_cents, rule_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
		" ON CONFLICT ON CONSTRAINT ai_account_alerts_once DO NOTHING"
	};
	static AiKeptPlan kept[2];
	Oid			types[8] = {TIMESTAMPTZOID, TEXTOID, TEXTOID,
		a->kind == AI_ALERT_PLAN ? DATEOID : TIMESTAMPTZOID, INT4OID, NUMERICOID, NUMERICOID, INT4OID};
	int			nargs = a->kind == AI_ALERT_PLAN ? 7 : 8;
	Datum		vals[8];
	AiInternalState st;
	SPIPlanPtr	splan;
	int			rc;
	bool		written;

	if (!ai_ext_has_relation(a->kind == AI_ALERT_PLAN ? "ai_alerts" : "ai_account_alerts"))
		return false;			/* the database's extension is older */
	SPI_connect();
	splan = ai_kept_plan(&kept[a->kind], psprintf(ins[a->kind], ai_ext_schema()), nargs, types);
	vals[0] = TimestampTzGetDatum(now);
	vals[1] = CStringGetTextDatum(a->user_id);
	vals[2] = CStringGetTextDatum(a->owner);
	vals[3] = a->kind == AI_ALERT_PLAN ? DateADTGetDatum(a->month) :
		TimestampTzGetDatum(a->window_start);
	vals[4] = Int32GetDatum(a->pct);
	vals[5] = ai_money_to_numeric(a->spend);
	vals[6] = ai_money_to_numeric(a->budget);
	vals[7] = Int32GetDatum(a->rule_id);
	ai_as_owner_begin(&st);
	rc = SPI_execute_plan(splan, vals, NULL, false, 0);
	ai_as_owner_end(&st);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "ai_ratelimit: alert insert failed: %s", SPI_result_code_string(rc));
	written = (SPI_processed == 1);
	SPI_finish();
	if (written)
		ai_alert_notify(a);
	return written;
}

/* ---- spent budgets: queued by checks, written by a worker ---- */

#define AI_ALERT_QUEUE_LEN		32

typedef struct AiAlertQueue
{
	slock_t		mutex;
	int			n;
	AiAlert		q[AI_ALERT_QUEUE_LEN];
} AiAlertQueue;

static AiAlertQueue *alert_queue = NULL;

Size
ai_alert_queue_size(void)
{
	return sizeof(AiAlertQueue);
}

void
ai_alert_queue_init(void)
{
	bool		found;

	alert_queue = ShmemInitStruct("ai_ratelimit alert queue", sizeof(AiAlertQueue), &found);
	if (!found)
	{
		SpinLockInit(&alert_queue->mutex);
		alert_queue->n = 0;
	}
}

/* Take the oldest queued alert of database db into *a; false when none. */
static bool
ai_alert_pop(Oid db, AiAlert *a)
{
	bool		got = false;

	SpinLockAcquire(&alert_queue->mutex);
	for (int i = 0; i < alert_queue->n; i++)
	{
		if (alert_queue->q[i].dbid != db)
			continue;
		*a = alert_queue->q[i];
		memmove(&alert_queue->q[i], &alert_queue->q[i + 1],
				sizeof(AiAlert) * (alert_queue->n - i - 1));
		alert_queue->n--;
		got = true;
		break;
	}
	SpinLockRelease(&alert_queue->mutex);
	return got;
}

/*
 * A check was refused by a spent budget whose exhausted bit it set: queue
 * the 100% alert and start a worker to write it.  When the queue is full
 * or no worker can start, a WARNING says the alert is lost (the budget
 * still refuses; its bit is set until the window ends or the counters
 * load again).
 */
void
ai_alert_exhausted(const AiAlert *a)
{
	BackgroundWorker w;
	bool		queued = false;

	if (alert_queue == NULL)
		return;
	SpinLockAcquire(&alert_queue->mutex);
	if (alert_queue->n < AI_ALERT_QUEUE_LEN)
	{
		alert_queue->q[alert_queue->n++] = *a;
		queued = true;
	}
	SpinLockRelease(&alert_queue->mutex);
	if (!queued)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("ai_ratelimit could not queue the alert of a spent budget"),
				 errdetail("%d alerts wait for a worker to write them.", AI_ALERT_QUEUE_LEN)));
		return;
	}

	ai_worker_describe(&w, BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION,
					   BgWorkerStart_RecoveryFinished, BGW_NEVER_RESTART,
					   "ai_alert_worker_main", "ai_ratelimit alerts");
	w.bgw_main_arg = ObjectIdGetDatum(a->dbid);
	if (!RegisterDynamicBackgroundWorker(&w, NULL))
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("ai_ratelimit could not start a worker to write the alert of a spent budget"),
				 errdetail("Every background worker slot is in use; the alert waits for the next one."),
				 errhint("Raise max_worker_processes.")));
}

/*
 * The worker: connected to one database, it writes that database's queued
 * alerts, each in a transaction of its own, then exits.
 */
void
ai_alert_worker_main(Datum arg)
{
	Oid			db = DatumGetObjectId(arg);
	AiAlert		a;

	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(db, InvalidOid, 0);
	pgstat_report_appname("ai_ratelimit alerts");
	while (ai_alert_pop(db, &a))
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		if (OidIsValid(get_extension_oid("ai_ratelimit", true)))
			(void) ai_alert_write(&a, GetCurrentTimestamp());
		PopActiveSnapshot();
		CommitTransactionCommand();
		CHECK_FOR_INTERRUPTS();
	}
	proc_exit(0);
}

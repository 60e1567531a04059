/*-------------------------------------------------------------------------
 *
 * alerts.h
 *		Budget alerts (alerts.c): rows of ai_alerts and ai_account_alerts,
 *		each with a notification on the channel ai_ratelimit.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_ALERTS_H_
#define AI_ALERTS_H_

#include "base.h"
#include "money.h"
#include "settings.h"

/* The bit of AiEntry.alerts_sent that says the budget refused a check in its window. */
#define AI_ALERT_EXHAUSTED_BIT	(1U << 15)

/* Whose budget an alert is of. */
typedef enum AiAlertKind
{
	AI_ALERT_PLAN = 0,			/* a user's monthly budget (ai_alerts) */
	AI_ALERT_ACCOUNT			/* a cents rule on an account (ai_account_alerts) */
} AiAlertKind;

/* One alert: what its row and its notification say. */
typedef struct AiAlert
{
	AiAlertKind kind;
	Oid			dbid;
	char		user_id[AI_MAX_USER_ID_LEN + 1];	/* the user, or the one whose call crossed */
	char		owner[AI_MAX_USER_ID_LEN + 1];	/* the plan, or the account */
	int32		rule_id;		/* AI_ALERT_ACCOUNT */
	DateADT		month;			/* AI_ALERT_PLAN: the month's first day */
	TimestampTz window_start;	/* AI_ALERT_ACCOUNT */
	int32		pct;
	AiMoney		spend;
	AiMoney		budget;
	bool		exhausted;		/* a check was refused: the budget is spent */
} AiAlert;

extern int	ai_alerts_due(uint32 *sent, const int32 *pct, int npct, AiMoney budget,
						  AiMoney after, int32 *due, uint32 *bits);
extern void ai_alert_init(AiAlert *a, AiAlertKind kind, const char *user_id, int idlen,
						  const char *owner, int32 pct, AiMoney spend, AiMoney budget);
extern bool ai_alert_write(const AiAlert *a, TimestampTz now);
extern void ai_alert_exhausted(const AiAlert *a);
extern Size ai_alert_queue_size(void);
extern void ai_alert_queue_init(void);
extern PGDLLEXPORT void ai_alert_worker_main(Datum arg);

#endif							/* AI_ALERTS_H_ */

/*-------------------------------------------------------------------------
 *
 * xact.h
 *		What a transaction took, given back when it rolls back (xact.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_XACT_H_
#define AI_XACT_H_

#include "shmem.h"

/* xact.c */
typedef enum AiChargeKind
{
	AI_CHARGE_CHECK,			/* burst and/or daily count, maybe a reservation */
	AI_CHARGE_RECORD			/* an ai_record_usage call */
} AiChargeKind;

typedef struct AiCharge
{
	AiChargeKind kind;
	SubTransactionId subxid;
	AiKey		key;
	int64		burst_bucket;	/* -1 when no burst count was taken */
	int32		day;			/* -1 when no daily count was taken */
	int64		resv_id;		/* reservation made (check) or settled (record) */
	int32		resv_slot;		/* its slot, when resv_id > 0 */
	int32		month;			/* record: month of the cost */
	AiMoney		cost;			/* record: cost added to inflight_cost */
	int32		token_bucket;	/* record: bucket charged with tokens, or -1 */
	uint32		tokens;			/* record: tokens charged there */
	uint32		alert_bits;		/* record: alert thresholds it notified */
	int32		rule_first;		/* what it took of the rules: touches */
	int16		rule_n;			/* [rule_first, rule_first + rule_n) (rulestate.c) */
} AiCharge;

extern void ai_xact_init(void);
extern void ai_charge_reserve(void);
extern void ai_charge_reserve_n(int n);
extern void ai_charge_add(const AiCharge *c);
extern int64 ai_xact_own_reservation(const AiKey *key, TimestampTz now, int32 *slot);

#endif							/* AI_XACT_H_ */

/*-------------------------------------------------------------------------
 *
 * money.h
 *		Exact fixed-point money (money.c): int64 counts of 1e-9 cent.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_MONEY_H
#define AI_MONEY_H

#include "postgres.h"

#include "fmgr.h"

/* Money: int64 counts of 1e-9 cent (prices have at most 5 decimals). */
#define AI_MONEY_SCALE			9
#define AI_MONEY_UNITS_PER_CENT	INT64CONST(1000000000)
typedef int64 AiMoney;
#define AI_MONEY_MAX			PG_INT64_MAX

extern AiMoney ai_money_from_numeric(Datum num, bool round_up, const char *what);
extern Datum ai_money_to_numeric(AiMoney m);
extern AiMoney ai_money_add(AiMoney a, AiMoney b);
extern AiMoney ai_money_percent(AiMoney m, int32 pct);

#endif							/* AI_MONEY_H */

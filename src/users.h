/*-------------------------------------------------------------------------
 *
 * users.h
 *		Per-user configuration: ai_user_plans and ai_user_limits (users.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_USERS_H_
#define AI_USERS_H_

#include "config.h"
#include "shmem.h"

/* users.c */
/* Accounts of a user kept in its cached configuration; more are asked of the table. */
#define AI_USER_ACCOUNTS		8

extern const char *ai_user_plan(const AiUser *u);
extern const char *ai_user_account(const AiUser *u, const char *named, bool record);
extern void ai_apply_user_limits(const AiUser *u, AiPlan *plan);
extern void ai_users_row_changed(HeapTuple tup, TupleDesc td, bool limits);
extern void ai_users_all_changed(bool limits);
extern void ai_users_init(void);

#endif							/* AI_USERS_H_ */

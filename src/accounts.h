/*-------------------------------------------------------------------------
 *
 * accounts.h
 *		The account tree and memberships, as checks find them (accounts.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_ACCOUNTS_H_
#define AI_ACCOUNTS_H_

/* The most accounts from a root down to its deepest sub-account (ai_accounts' trigger). */
#define AI_MAX_ACCOUNT_DEPTH	8

/* accounts.c */
extern int	ai_account_chain(const char *account_id, const char **chain);
struct AiKey;
extern int	ai_accounts_of_keys(const struct AiKey *keys, int n, bool ordered, const char **ids);
extern Datum ai_account_subtree(const char *account_id);
extern uint32 ai_accounts_stamp(void);
extern int	ai_account_alert_percents(const char *account_id, int32 *pct);

#endif							/* AI_ACCOUNTS_H_ */

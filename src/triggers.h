/*-------------------------------------------------------------------------
 *
 * triggers.h
 *		The trigger on the configuration tables, and DROP EXTENSION
 *		(triggers.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_TRIGGERS_H_
#define AI_TRIGGERS_H_

#include "base.h"
#include "money.h"
#include "settings.h"

extern void ai_triggers_init_hooks(void);
extern void ai_triggers_init_xact(void);

#endif							/* AI_TRIGGERS_H_ */

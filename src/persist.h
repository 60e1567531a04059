/*-------------------------------------------------------------------------
 *
 * persist.h
 *		Saving the counters to disk and loading them at start; the
 *		background worker that saves (persist.c).  The saved layout is in
 *		saved.h, for persist.c and replica.c only.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_PERSIST_H_
#define AI_PERSIST_H_

#include "base.h"
#include "money.h"
#include "settings.h"

extern void ai_load(void);
extern void ai_save_at_exit(int code, Datum arg);
extern void ai_register_saver(void);


#endif							/* AI_PERSIST_H_ */

/*-------------------------------------------------------------------------
 *
 * guard.h
 *		The checkpoint guard: no checkpoint completes before the counters
 *		are saved past its redo point (guard.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_GUARD_H_
#define AI_GUARD_H_

#include "storage/latch.h"

extern Size ai_guard_shmem_size(void);
extern void ai_guard_shmem_init(void);
extern void ai_register_guard(void);

/* The saver's side (persist.c). */
extern void ai_guard_saver_is(Latch *latch);
extern uint64 ai_guard_wanted(void);
extern void ai_guard_saved(uint64 wanted);

/* A save that begins from now on, waited for (a checkpoint, replica.c). */
extern bool ai_guard_save_now(void);

#endif							/* AI_GUARD_H_ */

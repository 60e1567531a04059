/*-------------------------------------------------------------------------
 *
 * sweep.h
 *		An entry's life in the shared table (sweep.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_SWEEP_H
#define AI_SWEEP_H

#include "shmem.h"

extern AiEntry *ai_entry_get(const AiKey *key, uint32 hashcode, LWLock *lock,
							 TimestampTz now, const char *id, int idlen);
extern AiEntry *ai_holder_get(const AiUser *u, TimestampTz now);
extern AiEntry *ai_holder_lookup(const AiUser *u, TimestampTz now, bool create);
extern bool ai_entry_is_live(AiEntry *e, TimestampTz now, const AiCalendar *cal);
extern void ai_entry_forget(AiEntry *e);
extern void ai_forget_database(Oid dbid);
extern void ai_sweep_background(TimestampTz now);

#endif							/* AI_SWEEP_H */

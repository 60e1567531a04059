/*-------------------------------------------------------------------------
 *
 * sweep.h
 *		An entry's life in the shared table, and a holder's stamps (sweep.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_SWEEP_H
#define AI_SWEEP_H

#include "accounts.h"
#include "shmem.h"

/* Holders' stamps, and the cached uses that follow them. */
extern int64 ai_user_stamp(const AiEntry *holder);
extern int64 ai_stamp_add(int64 a, int64 b);
extern int64 ai_tree_offset(bool tree);
extern int64 ai_use_stamp(const AiEntry *holder, bool tree);
extern void ai_use_keep(AiEntry *s, const AiEntry *holder, bool tree);
extern bool ai_use_saves_exact(const AiEntry *s);
extern void ai_use_restored(AiEntry *s, bool tree);

extern AiEntry *ai_entry_get(const AiKey *key, uint32 hashcode, LWLock *lock,
							 TimestampTz now, const char *id, int idlen);
extern AiEntry *ai_holder_get(const AiUser *u, TimestampTz now);
extern AiEntry *ai_holder_lookup(const AiUser *u, TimestampTz now, bool create);
extern bool ai_entry_is_live(AiEntry *e, TimestampTz now, const AiCalendar *cal);
extern void ai_entry_forget(AiEntry *e);
extern void ai_forget_database(Oid dbid);
extern void ai_sweep_background(TimestampTz now);

#endif							/* AI_SWEEP_H */

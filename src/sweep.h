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

/*
 * A holder's stamp: moves with every record of the holder (change_seq) and
 * with every entry removed from its partition (an entry made again starts
 * its count anew).  Compared, never ordered.  Caller holds the lock.
 */
static inline int64
ai_user_stamp(const AiEntry *holder)
{
	uint32		p = ai_key_hash(&holder->key) % AI_NUM_PARTITIONS;

	return (int64) (((uint64) ai_table->part_epoch[p] << 32) | holder->change_seq);
}

/* Stamps are compared, never ordered: their sums wrap. */
static inline int64
ai_stamp_add(int64 a, int64 b)
{
	return (int64) ((uint64) a + (uint64) b);
}

/*
 * What a cached use of a holder's records is exact at: the holder's stamp
 * and, for a use summed over an account's subtree (tree), the tree it was
 * summed over (both counts only grow, so their sum in the high half moves
 * when either does).
 */
static inline int64
ai_tree_offset(bool tree)
{
	return tree ? (int64) ((uint64) ai_accounts_stamp() << 32) : 0;
}

static inline int64
ai_use_stamp(const AiEntry *holder, bool tree)
{
	return ai_stamp_add(ai_user_stamp(holder), ai_tree_offset(tree));
}

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

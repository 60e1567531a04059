/*-------------------------------------------------------------------------
 *
 * rings.h
 *		Sliding windows cut into buckets: burst and tokens per minute (rings.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_RINGS_H_
#define AI_RINGS_H_

#include "shmem.h"

/* rings.c */
extern void ai_burst_advance(AiEntry *e, int32 window_ms, TimestampTz now);
extern void ai_tokens_advance(AiEntry *e, TimestampTz now);
extern uint64 ai_tokens_count(AiEntry *e, TimestampTz now);
extern TimestampTz ai_tokens_retry_at(AiEntry *e, uint64 limit, uint64 need, TimestampTz now);
extern TimestampTz ai_burst_oldest_leaves(AiEntry *e, TimestampTz now);
extern TimestampTz ai_tokens_oldest_leave(AiEntry *e, TimestampTz now);
extern TimestampTz ai_burst_all_leave(AiEntry *e);
extern uint32 ai_burst_count(AiEntry *e, TimestampTz now);
extern TimestampTz ai_burst_retry_at(AiEntry *e, uint32 limit, TimestampTz now);
extern int64 ai_burst_bucket(AiEntry *e, TimestampTz now);

#endif							/* AI_RINGS_H_ */

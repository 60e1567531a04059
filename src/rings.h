/*-------------------------------------------------------------------------
 *
 * rings.h
 *		The counters of a window (rings.c): sliding windows cut into buckets
 *		(burst, tokens per minute), and the count of a calendar window.
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
extern int64 ai_burst_take(AiEntry *e);
extern void ai_burst_give_back(AiEntry *e, int64 b);
extern uint32 ai_tokens_take(AiEntry *e, uint64 tokens, int32 *bucket);
extern void ai_tokens_give_back(AiEntry *e, int32 b, uint32 n);
extern void ai_count_take(AiEntry *e, int32 code);
extern void ai_count_give_back(AiEntry *e, int32 code);

#endif							/* AI_RINGS_H_ */

/*-------------------------------------------------------------------------
 *
 * usage.h
 *		ai_record_usage: cost, usage row, shared counters (usage.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_USAGE_H_
#define AI_USAGE_H_

#include "shmem.h"

/* usage.c */
extern bool ai_recording_usage(void);
extern void ai_usage_init(void);
extern Size ai_open_records_size(void);
extern void ai_open_records_init(void);
extern TimestampTz ai_oldest_open_record(void);
/* The tokens of one call, as vendors bill them. */
typedef struct AiTokens
{
	int64		input;			/* uncached input */
	int64		output;
	int64		cached;			/* prompt-cache reads */
	int64		cache_write;	/* prompt-cache writes, 5-minute */
	int64		cache_write_1h; /* prompt-cache writes, 1-hour */
} AiTokens;

extern Datum ai_record(const AiUser *u, const char *model,
					   const AiTokens *tokens, int64 resv_id, bool has_resv);

#endif							/* AI_USAGE_H_ */

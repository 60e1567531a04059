/*-------------------------------------------------------------------------
 *
 * resvid.h
 *		Reservation ids that no server of a cluster issues twice (resvid.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_RESVID_H_
#define AI_RESVID_H_

#include "base.h"
#include "money.h"
#include "settings.h"

/* resvid.c: reservation ids */
#define AI_ID_NEED_CEILING		(-1)	/* ai_id_next: raise the ceiling first */
extern void ai_ids_load(void);
typedef enum AiIdsMode
{
	AI_IDS_CHECK,				/* a check that may issue an id */
	AI_IDS_FORCE,				/* ai_id_next met the ceiling */
	AI_IDS_SAVER				/* the saver, ahead of time */
} AiIdsMode;
extern void ai_ids_ensure(TimestampTz now, AiIdsMode mode);
extern int64 ai_id_next(TimestampTz now);
extern void ai_ids_floor_id(int64 id);
extern TimestampTz ai_id_time(int64 id);
extern void ai_ids_redo(const char *data, uint32 len);

#endif							/* AI_RESVID_H_ */

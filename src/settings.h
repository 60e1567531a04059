/*-------------------------------------------------------------------------
 *
 * settings.h
 *		The settings of ai_ratelimit (ai_ratelimit.*), as every module reads
 *		them: settings.c holds their values, _PG_init defines them.
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_SETTINGS_H
#define AI_SETTINGS_H

#include "postgres.h"

#include "pgtime.h"

/* What a consuming check does when the hash is full (ai_ratelimit.on_full). */
typedef enum AiOnFull
{
	AI_ON_FULL_REFUSE = 0,
	AI_ON_FULL_ALLOW
} AiOnFull;

/* settings.c (defined as GUCs by _PG_init), and users.c */
extern int	ai_max_keys;
extern int	ai_max_reservations;
extern int	ai_reservation_ttl;	/* seconds */
extern int	ai_save_interval;	/* milliseconds */
extern int	ai_compact_interval;	/* seconds; 0: the worker does not total usage */
extern char *ai_timezone_name;
extern pg_tz *ai_timezone;
extern int	ai_on_full;			/* AiOnFull */
extern int	ai_user_cache_size; /* users, per backend */
extern int	ai_unknown_model;	/* AiUnknownModel */

/* What ai_record_usage does with a model that has no price (ai_ratelimit.unknown_model). */
typedef enum AiUnknownModel
{
	AI_UNKNOWN_MODEL_WARN = 0,	/* price it by the '*' row, with a WARNING */
	AI_UNKNOWN_MODEL_REFUSE		/* an ERROR: nothing is recorded */
} AiUnknownModel;

#endif							/* AI_SETTINGS_H */

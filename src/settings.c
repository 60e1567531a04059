/*-------------------------------------------------------------------------
 *
 * settings.c
 *		The values of ai_ratelimit's settings, read by every module.
 *
 * _PG_init (ai_ratelimit.c) defines them as GUCs, with their bounds, units
 * and hooks; here they only live, so that a module reading one depends on
 * this file and not on the one that loads them all.  ai_ratelimit.user_cache_size
 * lives with the cache it bounds (users.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "settings.h"

int			ai_max_keys = 100000;
int			ai_max_reservations = 100000;
int			ai_reservation_ttl = 900;
int			ai_save_interval = 1000;
int			ai_compact_interval = 3600;
char	   *ai_timezone_name = NULL;
pg_tz	   *ai_timezone = NULL;
int			ai_on_full = AI_ON_FULL_REFUSE;
int			ai_unknown_model = AI_UNKNOWN_MODEL_WARN;

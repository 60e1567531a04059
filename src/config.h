/*-------------------------------------------------------------------------
 *
 * config.h
 *		Caches of plans and prices, the extension's own SPI helpers (config.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef AI_CONFIG_H_
#define AI_CONFIG_H_

#include "utils/relcache.h"

#include "extension.h"
#include "stats.h"

/* config.c */
#define AI_MAX_ALERTS			8

typedef struct AiPlan
{
	char		name[NAMEDATALEN * 2];
	bool		has_burst;
	bool		has_daily;
	bool		has_budget;
	bool		has_tpm;
	bool		blocked;		/* a per-user block is in force */
	int32		burst_limit;
	int32		burst_window_ms;
	int32		daily_limit;
	int64		tokens_per_minute;
	AiMoney		budget;
	TimestampTz blocked_until;	/* DT_NOEND: until lifted */
	int			nalerts;
	int32		alert_percent[AI_MAX_ALERTS];
	uint16		name_hash;
	AiStats    *stats;			/* shared counters of this plan */
} AiPlan;

typedef struct AiPrice
{
	AiMoney		input;			/* per token, 1e-9 cent units */
	AiMoney		output;
	AiMoney		cached_input;
	AiMoney		cache_write;	/* 5-minute prompt-cache writes */
	AiMoney		cache_write_1h; /* 1-hour prompt-cache writes */
	bool		fallback;		/* priced by the '*' row */
	char		priced_as[AI_MAX_MODEL_LEN + 1];
} AiPrice;

/*
 * The limit columns that ai_plans and ai_user_limits share, decoded from a
 * row by ai_decode_limits(); a has_ flag is false where the column is NULL.
 */
typedef struct AiLimitCols
{
	bool		has_burst_limit;
	bool		has_burst_window;
	bool		has_daily;
	bool		has_budget;
	bool		has_tpm;
	int32		burst_limit;
	int32		burst_window_ms;
	int32		daily_limit;
	int64		tokens_per_minute;
	AiMoney		budget;
} AiLimitCols;

/*
 * The limit columns of the table aliased t, in the order ai_decode_limits()
 * reads them; the burst window comes as whole milliseconds, and %s is the
 * tokens-per-minute expression.
 */
#define AI_LIMIT_COLS_OF(t) \
	t ".burst_limit, " \
	"pg_catalog.ceil(pg_catalog.date_part('epoch', " t ".burst_window) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int4, " \
	t ".daily_limit, " t ".monthly_budget_cents, %s"
#define AI_NUM_LIMIT_COLS		5

/* A user's row of ai_user_limits. */
typedef struct AiUserLimits
{
	bool		has_row;
	AiLimitCols lim;
	bool		has_block;
	TimestampTz blocked_until;	/* DT_NOEND: until lifted */
} AiUserLimits;

extern void ai_decode_limits(HeapTuple tup, TupleDesc td, int first, AiLimitCols *l);
extern void ai_limits_apply(const AiLimitCols *l, AiPlan *plan);
extern const AiPlan *ai_plan_lookup(const char *plan);
extern bool ai_plans_have_alerts(void);
extern const char *ai_plan_name_by_hash(uint16 h);
extern void ai_price_lookup(const char *model, AiPrice *price, bool recording);
extern const char *ai_price_row_of(const char *model);

/*
 * Model families (config.c): a provider's dated name, such as
 * gpt-4o-2024-08-06 or claude-sonnet-4-5-20250929, belongs to the family
 * named without its date.  The date is one of -YYYY-MM-DD, -YYYYMMDD and
 * @YYYYMMDD (a year of 20xx, a month and a day that can be) at the end of
 * the name.  AI_MODEL_TAIL_RE is the same test as a regular expression over
 * what follows a family's name (empty: the family itself), for the queries
 * that sum a rule's use from the tables: both must say the same.
 */
#define AI_MODEL_TAIL_RE \
	"^(-20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])" \
	"|[-@]20[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01]))?$"

extern bool ai_model_is_date_tail(const char *tail);
extern int	ai_model_family_len(const char *model);
extern void ai_config_init(void);

/* One snapshot of the caches per call (config.c). */
extern void ai_caches_new_call(void);
extern bool ai_cache_look_due(uint64 *seen);
extern void ai_cache_retire(MemoryContext cxt);
extern HTAB *ai_cache_hash(const char *name, Size keysize, Size entrysize, long n,
						   MemoryContext cxt);

/*
 * A new context for a cache that is read again, in *cxtp; the one it had
 * (none the first time) is retired, since a call may still point into it.
 */
#define ai_cache_renew(cxtp, parent, name, sizes) \
	do { \
		if (*(cxtp) != NULL) \
			ai_cache_retire(*(cxtp)); \
		*(cxtp) = AllocSetContextCreate((parent), (name), sizes); \
	} while (0)

/*
 * A backend's copy of a whole configuration table (ai_plans,
 * ai_model_prices, ai_rules): read again after a change to the table,
 * which the table's trigger announces as PostgreSQL announces its own
 * catalog changes, with a relcache invalidation (ai_table_changed).  It
 * reaches this backend's next command, every other backend once the
 * change commits, standbys with the commit's WAL record, and is undone
 * locally when the change rolls back.  A cache looks at most once per call.
 */
typedef struct AiTableCache
{
	const char *table;			/* its name in the extension's schema */
	Oid			relid;			/* as of the last read; InvalidOid: absent */
	bool		loaded;			/* its last read ended */
	bool		valid;			/* no invalidation since the last read began */
	uint64		call;			/* the call that last looked */
} AiTableCache;

#define AI_TABLE_CACHE(name)	{(name), InvalidOid, false, false, 0}

extern bool ai_table_cache_stale(AiTableCache *c);
extern void ai_table_cache_reading(AiTableCache *c);
extern void ai_table_cache_read(AiTableCache *c);
extern void ai_table_changed(Relation rel);

/*
 * Shared generations, as bits for ai_config_bump_at_end(): they stamp
 * what is cached in shared memory, which a backend's invalidation cannot
 * reach.
 */
#define AI_GEN_USAGE			0x4		/* ai_usage rows deleted: spend reloads */
#define AI_GEN_ACCOUNTS			0x10	/* ai_accounts and memberships */
extern void ai_config_bump_at_end(uint32 bits);
extern void ai_config_changed(uint32 bits);
extern void ai_config_init_xact(void);

#endif							/* AI_CONFIG_H_ */

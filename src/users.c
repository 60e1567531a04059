/*-------------------------------------------------------------------------
 *
 * users.c
 *		Per-user configuration: a user's row of ai_user_plans and of
 *		ai_user_limits, looked up one user at a time and cached per user.
 *
 * These tables can hold millions of rows and change all the time (every
 * sign-up inserts a plan), so they are never loaded whole.  A backend looks
 * up a user the first time it checks that user (one indexed query of both
 * tables) and keeps the answer, a row or the absence of one, in a cache
 * of at most ai_ratelimit.user_cache_size users.
 *
 * Invalidation is per user.  A row trigger on both tables remembers the
 * changed user ids of the transaction; when it ends, their keys go into a
 * ring in shared memory (users_ring, guarded by users_lock, counted by
 * users_seq), and every backend drops those users from its cache before its
 * next lookup.  A backend that fell more than a ring behind, a TRUNCATE or
 * a transaction that changed very many users clears the whole cache
 * (users_gen); it refills one user at a time.  The changing backend drops
 * the user at once, so its own transaction sees its change.
 *
 * A check that names its plan needs only ai_user_limits, and most users
 * have no row there: while that table is empty in this database (known per
 * limits_gen, bumped by every change to it), such a check does no lookup.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "config.h"
#include "shmem.h"
#include "users.h"

/* A transaction that changes more users than this clears every cache. */
#define AI_USERS_PENDING_MAX	1024

int			ai_user_cache_size = 65536;

/* A user's configuration, as cached. */
typedef struct UserConfig
{
	AiKey		key;			/* hash key: the user id's key */
	const char *plan;			/* interned; NULL when the user has no row */
	AiUserLimits limits;
	const char *default_account;	/* interned; NULL: none */
	int			naccounts;		/* accounts it is a member of; -1: more than cached */
	const char *accounts[AI_USER_ACCOUNTS];	/* interned, in id order */
} UserConfig;

static MemoryContext users_cxt = NULL;
static HTAB *user_cache = NULL;
static HTAB *plan_names = NULL; /* interned plan names of user_cache */
static HTAB *account_names = NULL;	/* interned account ids of user_cache */
static uint32 members_gen_seen = 0;
static bool members_exist = false;
static uint32 users_gen_seen = 0;
static uint64 users_call = 0;	/* the call that last looked at other backends' changes */
static uint64 users_seq_seen = 0;
static uint32 limits_gen_seen = 0;
static bool limits_exist = false;

/* changed users of this transaction */
static AiKey *pending = NULL;
static int	npending = 0;
static bool pending_all = false;
static bool pending_limits = false;

static void
ai_users_reset_cache(void)
{
	HASHCTL		ctl;

	ai_cache_renew(&users_cxt, TopMemoryContext, "ai_ratelimit users", ALLOCSET_DEFAULT_SIZES);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(AiKey);
	ctl.entrysize = sizeof(UserConfig);
	ctl.hcxt = users_cxt;
	user_cache = hash_create("ai_ratelimit user configuration", 1024, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	plan_names = ai_cache_hash("ai_ratelimit user plan names", NAMEDATALEN * 2,
							   NAMEDATALEN * 2, 16, users_cxt);
	account_names = ai_cache_hash("ai_ratelimit user account ids", AI_MAX_USER_ID_LEN + 1,
								  AI_MAX_USER_ID_LEN + 1, 16, users_cxt);
}

/*
 * Does this database's ai_account_members have any row?  Known per
 * accounts_gen, which every change to the table bumps.
 */
static bool
ai_members_exist(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->accounts_gen);

	if (gen != members_gen_seen)
	{
		members_exist = false;
		if (ai_ext_has_relation("ai_account_members"))
		{
			SPI_connect();
			ai_spi_read(psprintf("SELECT FROM %s.ai_account_members LIMIT 1", ai_ext_schema()),
						0, NULL, NULL);
			members_exist = (SPI_processed > 0);
			SPI_finish();
		}
		members_gen_seen = gen;
	}
	return members_exist;
}

/* An account id, interned in the cache's memory. */
static const char *
ai_intern_account(Datum d)
{
	char	   *id = TextDatumGetCString(d);

	if (strlen(id) > AI_MAX_USER_ID_LEN)
		return "";				/* names no account: the table's CHECK allows none */
	return hash_search(account_names, id, HASH_ENTER, NULL);
}

/* Drop the users that other transactions changed since the last look. */
static void
ai_users_sync(void)
{
	uint32		gen;
	uint64		seq;

	if (user_cache != NULL && !ai_cache_look_due(&users_call))
		return;					/* one look per call */
	gen = pg_atomic_read_u32(&ai_shared->users_gen);
	seq = pg_atomic_read_u64(&ai_shared->users_seq);
	if (user_cache == NULL || gen != users_gen_seen)
	{
		ai_users_reset_cache();
		users_gen_seen = gen;
		users_seq_seen = seq;
		return;
	}
	if (seq == users_seq_seen)
		return;
	LWLockAcquire(ai_shared->users_lock, LW_SHARED);
	seq = pg_atomic_read_u64(&ai_shared->users_seq);
	if (seq - users_seq_seen > AI_USERS_RING)
		ai_users_reset_cache();
	else
		for (uint64 s = users_seq_seen; s < seq; s++)
			hash_search(user_cache, &ai_shared->users_ring[s % AI_USERS_RING],
						HASH_REMOVE, NULL);
	LWLockRelease(ai_shared->users_lock);
	users_seq_seen = seq;
}

/* Does this database's ai_user_limits have any row? */
static bool
ai_limits_exist(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->limits_gen);

	if (gen != limits_gen_seen)
	{
		limits_exist = false;
		if (ai_ext_has_user_limits())
		{
			SPI_connect();
			ai_spi_read(psprintf("SELECT FROM %s.ai_user_limits LIMIT 1", ai_ext_schema()),
						0, NULL, NULL);
			limits_exist = (SPI_processed > 0);
			SPI_finish();
		}
		limits_gen_seen = gen;
	}
	return limits_exist;
}

/* Make room: drop an eighth of the cache (the first entries met). */
static void
ai_users_evict(void)
{
	HASH_SEQ_STATUS st;
	UserConfig *u = NULL;
	long		target = Max(hash_get_num_entries(user_cache) / 8, 1);
	long		dropped = 0;

	hash_seq_init(&st, user_cache);
	while (dropped < target && (u = hash_seq_search(&st)) != NULL)
	{
		hash_search(user_cache, &u->key, HASH_REMOVE, NULL);
		dropped++;
	}
	if (u != NULL)
		hash_seq_term(&st);
}

/* Read one user's rows of ai_user_plans and ai_user_limits into *u. */
static void
ai_users_query(const char *user_id, int len, UserConfig *u)
{
	static AiKeptPlan kept;
	const char *schema = ai_ext_schema();
	Oid			types[1] = {TEXTOID};
	Datum		vals[1];
	AiInternalState st;
	SPIPlanPtr	plan;
	char	   *sql;
	int			rc;

	bool		members = ai_ext_has_relation("ai_account_members");
	char	   *accounts = members ?
		psprintf(", (SELECT m.account_id FROM %s.ai_account_members m"
				 "    WHERE m.user_id OPERATOR(pg_catalog.=) u.user_id AND m.is_default),"
				 " ARRAY(SELECT m.account_id FROM %s.ai_account_members m"
				 "    WHERE m.user_id OPERATOR(pg_catalog.=) u.user_id"
				 "    ORDER BY m.account_id LIMIT %d)",
				 schema, schema, AI_USER_ACCOUNTS + 1) : "";
	int			acol;

	if (ai_ext_has_user_limits())
	{
		sql = psprintf("SELECT up.plan, l.user_id IS NOT NULL, " AI_LIMIT_COLS_OF("l") ", l.blocked_until%s"
					   " FROM (SELECT $1 AS user_id) u"
					   " LEFT JOIN %s.ai_user_plans up ON up.user_id OPERATOR(pg_catalog.=) u.user_id"
					   " LEFT JOIN %s.ai_user_limits l ON l.user_id OPERATOR(pg_catalog.=) u.user_id",
					   "l.tokens_per_minute", accounts, schema, schema);
		acol = 4 + AI_NUM_LIMIT_COLS;
	}
	else
	{
		sql = psprintf("SELECT up.plan, false%s FROM (SELECT $1 AS user_id) u"
					   " LEFT JOIN %s.ai_user_plans up ON up.user_id OPERATOR(pg_catalog.=) u.user_id",
					   accounts, schema);
		acol = 3;
	}
	SPI_connect();
	plan = ai_kept_plan(&kept, sql, 1, types);

	vals[0] = PointerGetDatum(cstring_to_text_with_len(user_id, len));
	ai_as_owner_begin(&st);
	PushActiveSnapshot(GetLatestSnapshot());
	rc = SPI_execute_plan(plan, vals, NULL, true, 1);
	PopActiveSnapshot();
	ai_as_owner_end(&st);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "ai_ratelimit: user lookup failed: %s", SPI_result_code_string(rc));

	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	td = SPI_tuptable->tupdesc;
		Datum		d;

		u->plan = NULL;
		if (ai_spi_col(tup, td, 1, &d))
		{
			char	   *name = TextDatumGetCString(d);

			if (strlen(name) < NAMEDATALEN * 2)
				u->plan = hash_search(plan_names, name, HASH_ENTER, NULL);
			else
				u->plan = "";	/* names no plan that a check could find */
		}
		memset(&u->limits, 0, sizeof(u->limits));
		if (ai_spi_col(tup, td, 2, &d) && DatumGetBool(d))
		{
			ai_decode_limits(tup, td, 3, &u->limits.lim);
			u->limits.has_block = ai_spi_col(tup, td, 3 + AI_NUM_LIMIT_COLS, &d);
			u->limits.blocked_until = u->limits.has_block ? DatumGetTimestampTz(d) : 0;
			u->limits.has_row = true;
		}
		u->default_account = NULL;
		u->naccounts = 0;
		if (members)
		{
			ArrayType  *arr;
			Datum	   *ids;
			int			n;

			if (ai_spi_col(tup, td, acol, &d))
				u->default_account = ai_intern_account(d);
			if (ai_spi_col(tup, td, acol + 1, &d))
			{
				arr = DatumGetArrayTypeP(d);
				deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &ids, NULL, &n);
				u->naccounts = n > AI_USER_ACCOUNTS ? -1 : n;
				for (int i = 0; i < Min(n, AI_USER_ACCOUNTS); i++)
					u->accounts[i] = ai_intern_account(ids[i]);
			}
		}
	}
	SPI_finish();
}

/*
 * A user's configuration, from the cache or looked up.  With need_plan
 * false (the check names its plan) and no row in ai_user_limits, NULL: no
 * lookup is needed.
 */
static const UserConfig *
ai_user_config(const AiUser *user, bool need_plan)
{
	UserConfig *u;
	UserConfig	fresh;

	ai_users_sync();
	if (!need_plan && !ai_limits_exist())
		return NULL;
	u = hash_search(user_cache, &user->key, HASH_FIND, NULL);
	if (u != NULL)
		return u;

	/*
	 * Make room before the lookup: the plan name it interns lives in the
	 * cache's memory, which a reset gives back.
	 */
	if (hash_get_num_entries(user_cache) > ai_user_cache_size)
		ai_users_reset_cache();	/* the bound was lowered: give the memory back */
	else if (hash_get_num_entries(user_cache) >= ai_user_cache_size)
		ai_users_evict();
	ai_users_query(user->id, user->len, &fresh);
	u = hash_search(user_cache, &user->key, HASH_ENTER, NULL);
	u->plan = fresh.plan;
	u->limits = fresh.limits;
	u->default_account = fresh.default_account;
	u->naccounts = fresh.naccounts;
	memcpy(u->accounts, fresh.accounts, sizeof(u->accounts));
	return u;
}

/* The plan of a user from ai_user_plans, 'free' when the user has no row. */
const char *
ai_user_plan(const AiUser *user)
{
	const UserConfig *u = ai_user_config(user, true);

	return (u && u->plan) ? u->plan : "free";
}

/*
 * Apply a user's row of ai_user_limits to a copy of the plan: every column
 * that is not NULL replaces the plan's limit; blocked_until blocks.
 */
void
ai_apply_user_limits(const AiUser *user, AiPlan *plan)
{
	const UserConfig *u = ai_user_config(user, false);

	if (u == NULL || !u->limits.has_row)
		return;
	ai_limits_apply(&u->limits.lim, plan);
	if (u->limits.has_block)
	{
		plan->blocked = true;
		plan->blocked_until = u->limits.blocked_until;
	}
}

/* Is the user a member of the account?  Asked of the table when the cache holds too many. */
static bool
ai_user_is_member(const AiUser *user, const UserConfig *u, const char *account)
{
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		vals[2];
	bool		member;

	if (u->naccounts >= 0)
	{
		for (int i = 0; i < u->naccounts; i++)
			if (strcmp(u->accounts[i], account) == 0)
				return true;
		return false;
	}
	vals[0] = PointerGetDatum(cstring_to_text_with_len(user->id, user->len));
	vals[1] = CStringGetTextDatum(account);
	SPI_connect();
	ai_spi_read(psprintf("SELECT FROM %s.ai_account_members"
						 " WHERE user_id OPERATOR(pg_catalog.=) $1 AND account_id OPERATOR(pg_catalog.=) $2",
						 ai_ext_schema()),
				2, types, vals);
	member = (SPI_processed > 0);
	SPI_finish();
	return member;
}

/*
 * The account a call of this user is charged to: the one named, which the
 * user must be a member of, or the user's default account; NULL when none
 * is named and the user has no default.
 */
const char *
ai_user_account(const AiUser *user, const char *named, bool record)
{
	const UserConfig *u;

	if (named == NULL && !ai_members_exist())
		return NULL;
	u = ai_user_config(user, true);
	if (named == NULL)
		return u->default_account;
	if ((!ai_members_exist() || !ai_user_is_member(user, u, named)) && record)
	{
		/* a call that happened is never lost: filed as a record naming none */
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("user \"%s\" is not a member of account \"%s\"", user->id, named),
				 errdetail("The call is recorded all the same, under the user's default account%s.",
						   u->default_account ? "" : " (it has none)")));
		return u->default_account;
	}
	if (!ai_members_exist() || !ai_user_is_member(user, u, named))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("user \"%s\" is not a member of account \"%s\"", user->id, named),
				 errhint("Add the user to the account in ai_account_members, or name an account the user belongs to.")));
	return named;
}

/*
 * A row of ai_user_plans or ai_user_limits changed (the row trigger): drop
 * the user from this backend's cache now, and from every backend's when the
 * transaction ends.
 */
void
ai_users_row_changed(HeapTuple tup, TupleDesc td, bool limits)
{
	int			col = SPI_fnumber(td, "user_id");
	bool		isnull;
	Datum		d;
	text	   *t;
	AiKey		key;

	if (limits)
		pending_limits = true;
	if (col <= 0 || tup == NULL)
	{
		pending_all = true;
		return;
	}
	d = heap_getattr(tup, col, td, &isnull);
	if (isnull)
		return;
	t = DatumGetTextPP(d);
	ai_make_key(&key, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
	if (user_cache != NULL)
		hash_search(user_cache, &key, HASH_REMOVE, NULL);
	if (limits)
		limits_exist = true;	/* this transaction may have added the first */
	if (npending >= AI_USERS_PENDING_MAX)
	{
		pending_all = true;
		return;
	}
	if (pending == NULL)
		pending = MemoryContextAlloc(TopMemoryContext, sizeof(AiKey) * AI_USERS_PENDING_MAX);
	pending[npending++] = key;
}

/* Every user's configuration may have changed (TRUNCATE, an old trigger). */
void
ai_users_all_changed(bool limits)
{
	pending_all = true;
	if (limits)
		pending_limits = true;
	if (user_cache != NULL)
		ai_users_reset_cache();
	if (ai_shared != NULL)		/* not preloaded: nothing is cached */
		limits_gen_seen = pg_atomic_read_u32(&ai_shared->limits_gen) - 1;
}

/* The transaction ends, committed or not: tell every backend what changed. */
static void
ai_users_xact_callback(XactEvent event, void *arg)
{
	if (ai_xact_end_of(event) == AI_XACT_NONE)
		return;
	if (npending == 0 && !pending_all && !pending_limits)
		return;
	if (ai_shared != NULL)
	{
		if (pending_all)
			pg_atomic_fetch_add_u32(&ai_shared->users_gen, 1);
		else if (npending > 0)
		{
			uint64		seq;

			LWLockAcquire(ai_shared->users_lock, LW_EXCLUSIVE);
			seq = pg_atomic_read_u64(&ai_shared->users_seq);
			for (int i = 0; i < npending; i++)
				ai_shared->users_ring[(seq + i) % AI_USERS_RING] = pending[i];
			pg_write_barrier();
			pg_atomic_write_u64(&ai_shared->users_seq, seq + npending);
			LWLockRelease(ai_shared->users_lock);
		}
		if (pending_limits)
			pg_atomic_fetch_add_u32(&ai_shared->limits_gen, 1);
	}
	npending = 0;
	pending_all = false;
	pending_limits = false;
}

void
ai_users_init(void)
{
	RegisterXactCallback(ai_users_xact_callback, NULL);
}

/*-------------------------------------------------------------------------
 *
 * accounts.c
 *		The account tree (ai_accounts) and memberships (ai_account_members),
 *		as a check finds them: which account a check of a user charges, and
 *		the chain of accounts above it.
 *
 * The tree is cached per backend whole (accounts are few: organisations and
 * their teams), read again when ai_accounts changes (AI_GEN_ACCOUNTS).  A
 * user's memberships are read per user and cached with the user's other
 * configuration generation, since members may be millions.
 *
 * How shared budgets are enforced:
 *
 *   - An account's rules (ai_rules scope 'account') count what every member
 *     uses through the account or any account below it.  Their counters are
 *     entries of the shared table keyed from the account (ai_account_init:
 *     a key of its own namespace, never equal to a user's), so they live in
 *     the account's partition, beside the account's own entry (kind
 *     AI_ENTRY_ACCOUNT: its records in flight and the estimates held on
 *     it).  A member rule (scope 'member') bounds one user inside one
 *     account and the accounts below it; its counters are keyed from the
 *     user and the rule, in the user's partition, like a user's rule.
 *   - A check takes the partition locks of the user and of every account
 *     on the chain in ascending order and releases them in descending
 *     order (decide.c); nothing else holds two partition locks but
 *     ai_lock_all, which takes them all in the same order.  LWLocks have
 *     no deadlock detector; this order makes a cycle impossible.  So every
 *     level is refused, charged and held under one set of locks, or none.
 *   - The check's reservation is held on each account by a shadow: a slot
 *     of the pool with the negated id, in the account's list, with the same
 *     amount, expiry and rules.  A record settles the shadows of the chain
 *     it is filed under (usage.c), ai_release_reservation frees them, a
 *     rollback frees them (xact.c), and they expire with the reservation.
 *     Being reservations, they are saved and sent to standbys.
 *   - A record counts in flight on each account of its chain, one lock at
 *     a time (what one level shows moves from held to recorded in one
 *     step), so the calendar use of an account rule, loaded from the rows
 *     whose account_id is in the account's subtree, is kept exact as a
 *     user's is, with the account entry's change counter as its stamp.
 *     That stamp also carries the tree's generation: a use summed over a
 *     subtree loads again when the tree or a membership changes, or a row
 *     filed under an account is written another way.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "accounts.h"
#include "config.h"
#include "extension.h"
#include "shmem.h"

/* One account of the tree, as cached. */
typedef struct AiAccountNode
{
	char	   *id;
	char	   *parent_id;		/* NULL: a root */
	int			parent;			/* index of the parent, or -1 */
	int			nalerts;		/* alert_percents */
	int32		alert_percent[AI_MAX_ALERTS];
} AiAccountNode;

typedef struct AiAccountSlot
{
	char		id[AI_MAX_USER_ID_LEN + 1];
	int			node;
} AiAccountSlot;

/* An account by the key of its counters (ai_account_init). */
typedef struct AiAccountByKey
{
	AiKey		key;
	int			node;
} AiAccountByKey;

static MemoryContext accounts_cxt = NULL;
static AiAccountNode *nodes = NULL;
static int	nnodes = 0;
static int	maxnodes = 0;
static HTAB *by_id = NULL;
static HTAB *by_key = NULL;		/* made when first asked, per reload */
static uint32 accounts_gen = 0; /* accounts_gen they were read at; 0: never */
static uint64 accounts_call = 0;	/* the call that last looked at accounts_gen */

static void
ai_cache_account_row(HeapTuple tup, TupleDesc td)
{
	AiAccountNode *n;
	Datum		d;
	MemoryContext old;

	nodes = ai_rows_grow(nodes, nnodes, &maxnodes, sizeof(AiAccountNode), accounts_cxt);
	n = &nodes[nnodes];
	old = MemoryContextSwitchTo(accounts_cxt);
	(void) ai_spi_col(tup, td, 1, &d);
	n->id = TextDatumGetCString(d);
	n->parent_id = ai_spi_col(tup, td, 2, &d) ? TextDatumGetCString(d) : NULL;
	n->parent = -1;
	MemoryContextSwitchTo(old);
	n->nalerts = ai_spi_percents(tup, td, 3, n->alert_percent, AI_MAX_ALERTS);
	nnodes++;
}

/* Read ai_accounts again (none in a database whose extension is older). */
static void
ai_reload_accounts(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->accounts_gen);

	ai_cache_renew(&accounts_cxt, TopMemoryContext, "ai_ratelimit accounts",
				   ALLOCSET_SMALL_SIZES);
	nodes = NULL;
	nnodes = maxnodes = 0;
	accounts_gen = 0;
	by_id = NULL;
	by_key = NULL;

	ai_load_extension_info();
	if (ai_ext_has_relation("ai_accounts"))
	{
		SPI_connect();
		ai_spi_each_row(psprintf("SELECT account_id, parent_id, %s FROM %s.ai_accounts",
								 ai_ext_has_column("ai_accounts", "alert_percents") ?
								 "alert_percents" : "NULL::pg_catalog.int4[]",
								 ai_ext_schema()),
						ai_cache_account_row);
		SPI_finish();
	}
	by_id = ai_cache_hash("ai_ratelimit accounts", AI_MAX_USER_ID_LEN + 1,
						  sizeof(AiAccountSlot), nnodes, accounts_cxt);
	for (int i = 0; i < nnodes; i++)
	{
		AiAccountSlot *s = hash_search(by_id, nodes[i].id, HASH_ENTER, NULL);

		s->node = i;
	}
	for (int i = 0; i < nnodes; i++)
	{
		AiAccountSlot *s;

		if (nodes[i].parent_id == NULL)
			continue;
		s = hash_search(by_id, nodes[i].parent_id, HASH_FIND, NULL);
		nodes[i].parent = s ? s->node : -1;
	}
	accounts_gen = gen;
}

/*
 * Read the tree again if it changed, looking at most once per call; with
 * now, look whatever the call saw (the old tree stays readable: retired).
 */
static void
ai_accounts_look(bool now)
{
	if (accounts_gen == 0 ||
		((ai_cache_look_due(&accounts_call) || now) &&
		 accounts_gen != pg_atomic_read_u32(&ai_shared->accounts_gen)))
		ai_reload_accounts();
}

/*
 * An account's node in the tree, read again as ai_accounts_look(now) says;
 * -1 when the tree has no such account.
 */
static int
ai_account_node(const char *account_id, bool now)
{
	AiAccountSlot *s;

	ai_accounts_look(now);
	if (strlen(account_id) > AI_MAX_USER_ID_LEN)
		return -1;
	s = hash_search(by_id, account_id, HASH_FIND, NULL);
	return s ? s->node : -1;
}

/*
 * An account and every account below it, as a text[] for the queries that
 * sum what was filed under them (rulestate.c).  An account not in the tree
 * is its own subtree: rows may name it all the same.
 */
Datum
ai_account_subtree(const char *account_id)
{
	/*
	 * The tree as it is now, not as the call first read it: the sum is
	 * stamped with the tree's generation read before (rulestate.c), so it
	 * must not be summed over an older tree.
	 */
	int			node = ai_account_node(account_id, true);
	Datum	   *ids = palloc(sizeof(Datum) * (nnodes + 1));
	int			n = 0;

	if (node < 0)
		ids[n++] = CStringGetTextDatum(account_id);
	else
		for (int i = 0; i < nnodes; i++)
		{
			/* below it: its chain passes through it (a chain is short) */
			int			depth = 0;

			for (int j = i; j >= 0 && depth <= AI_MAX_ACCOUNT_DEPTH; j = nodes[j].parent, depth++)
				if (j == node)
				{
					ids[n++] = CStringGetTextDatum(nodes[i].id);
					break;
				}
		}
	return PointerGetDatum(construct_array(ids, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * The alert thresholds of an account (ai_accounts.alert_percents), in
 * percents of each cents rule on it, into pct[AI_MAX_ALERTS]; how many.
 */
int
ai_account_alert_percents(const char *account_id, int32 *pct)
{
	int			node = ai_account_node(account_id, false);
	AiAccountNode *n;

	if (node < 0)
		return 0;
	n = &nodes[node];
	memcpy(pct, n->alert_percent, sizeof(int32) * n->nalerts);
	return n->nalerts;
}

/*
 * What the use of an account's rules depends on besides records: the tree
 * and memberships as they are now (ai_shared->accounts_gen), for the stamp
 * of their cached use (rulestate.c).  Never reads the tree: it is called
 * under partition locks and when transactions end.
 */
uint32
ai_accounts_stamp(void)
{
	return pg_atomic_read_u32(&ai_shared->accounts_gen);
}

/* How many accounts are above node i. */
static int
ai_account_depth(int i)
{
	int			d = 0;

	for (int j = nodes[i].parent; j >= 0 && d <= AI_MAX_ACCOUNT_DEPTH; j = nodes[j].parent)
		d++;
	return d;
}

/*
 * The accounts whose counters have these keys (a reservation's, as its
 * check charged them): their ids into ids[], nearest first (with ordered
 * false, put in that order by their depth in the tree).  An account since
 * removed from the tree is left out.  Returns how many.
 */
int
ai_accounts_of_keys(const AiKey *keys, int n, bool ordered, const char **ids)
{
	int			found[AI_MAX_ACCOUNT_DEPTH];
	int			m = 0;

	ai_accounts_look(false);
	if (by_key == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(AiKey);
		ctl.entrysize = sizeof(AiAccountByKey);
		ctl.hcxt = accounts_cxt;
		by_key = hash_create("ai_ratelimit accounts by key", Max(nnodes, 16), &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		for (int i = 0; i < nnodes; i++)
		{
			AiUser		a;
			AiAccountByKey *k;

			ai_account_init(&a, nodes[i].id, strlen(nodes[i].id));
			k = hash_search(by_key, &a.key, HASH_ENTER, NULL);
			k->node = i;
		}
	}
	for (int i = 0; i < n && m < AI_MAX_ACCOUNT_DEPTH; i++)
	{
		AiAccountByKey *k = hash_search(by_key, &keys[i], HASH_FIND, NULL);

		if (k != NULL)
			found[m++] = k->node;
	}
	/* unordered: the deepest first (a chain is a path up the tree) */
	if (!ordered)
		for (int i = 1; i < m; i++)
			for (int j = i; j > 0 && ai_account_depth(found[j]) > ai_account_depth(found[j - 1]); j--)
			{
				int			t = found[j];

				found[j] = found[j - 1];
				found[j - 1] = t;
			}
	for (int i = 0; i < m; i++)
		ids[i] = nodes[found[i]].id;
	return m;
}

/*
 * The chain of an account: the account itself, then each account above it
 * up to its root, as ids into chain[] (at most AI_MAX_ACCOUNT_DEPTH).
 * Returns how many, or 0 when the account does not exist.  The table's
 * trigger keeps the tree acyclic and at most AI_MAX_ACCOUNT_DEPTH deep; a
 * chain that is longer all the same (rows restored without the trigger)
 * is an error, never a loop.
 */
int
ai_account_chain(const char *account_id, const char **chain)
{
	int			n = 0;

	for (int i = ai_account_node(account_id, false); i >= 0; i = nodes[i].parent)
	{
		if (n == AI_MAX_ACCOUNT_DEPTH)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("account \"%s\" is more than %d levels deep, or in a cycle",
							account_id, AI_MAX_ACCOUNT_DEPTH),
					 errhint("Check parent_id in ai_accounts: the tree's trigger keeps it acyclic, but rows may have been written with triggers off.")));
		chain[n++] = nodes[i].id;
	}
	return n;
}

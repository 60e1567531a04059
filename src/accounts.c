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
 * How shared budgets are enforced (the plan this file is the first part
 * of):
 *
 *   - An account's rules (ai_rules scope 'account') count what every member
 *     uses through the account or any account below it.  Their counters are
 *     entries of the shared table keyed from the account (a key of its own
 *     namespace, never equal to a user's), so they live in the account's
 *     partition.  A member rule (scope 'member') bounds one user inside one
 *     account; its counters are keyed from the user and the rule, in the
 *     user's partition, like a user's rule.
 *   - A check takes the partition locks of the user and of every account
 *     on the chain in ascending partition order and releases them in
 *     descending order (LWLocks have no deadlock detector); nothing that
 *     holds a partition lock ever waits for a lower one.  So every level is
 *     refused, charged and held under one set of locks, or none is.
 *   - A reservation remembers the account it was made for; release,
 *     settle, rollback and expiry take the same lock set.  An account
 *     entry cannot walk its members' reservations, so it counts what they
 *     hold by expiry time, in buckets that expire whole at their end
 *     (never earlier than any reservation in them).
 *   - The calendar use of an account rule is loaded from ai_usage rows
 *     whose account_id is the account or one below it, and kept exact by
 *     every record as a user's is (in flight, then committed or rolled
 *     back), with the account entry's own change counter as its stamp.
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

#include "ai_accounts.h"
#include "ai_extension.h"
#include "ai_shmem.h"

/* One account of the tree, as cached. */
typedef struct AiAccountNode
{
	char	   *id;
	char	   *parent_id;		/* NULL: a root */
	int			parent;			/* index of the parent, or -1 */
} AiAccountNode;

typedef struct AiAccountSlot
{
	char		id[AI_MAX_USER_ID_LEN + 1];
	int			node;
} AiAccountSlot;

static MemoryContext accounts_cxt = NULL;
static AiAccountNode *nodes = NULL;
static int	nnodes = 0;
static int	maxnodes = 0;
static HTAB *by_id = NULL;
static uint32 accounts_gen = 0; /* accounts_gen they were read at; 0: never */

static void
ai_cache_account_row(HeapTuple tup, TupleDesc td)
{
	AiAccountNode *n;
	Datum		d;
	MemoryContext old;

	if (nnodes >= maxnodes)
	{
		maxnodes = Max(16, maxnodes * 2);
		nodes = nodes ? repalloc(nodes, sizeof(AiAccountNode) * maxnodes)
			: MemoryContextAlloc(accounts_cxt, sizeof(AiAccountNode) * maxnodes);
	}
	n = &nodes[nnodes];
	old = MemoryContextSwitchTo(accounts_cxt);
	(void) ai_spi_col(tup, td, 1, &d);
	n->id = TextDatumGetCString(d);
	n->parent_id = ai_spi_col(tup, td, 2, &d) ? TextDatumGetCString(d) : NULL;
	n->parent = -1;
	MemoryContextSwitchTo(old);
	nnodes++;
}

/* Read ai_accounts again (none in a database whose extension is older). */
static void
ai_reload_accounts(void)
{
	uint32		gen = pg_atomic_read_u32(&ai_shared->accounts_gen);
	HASHCTL		ctl;

	if (accounts_cxt == NULL)
		accounts_cxt = AllocSetContextCreate(TopMemoryContext, "ai_ratelimit accounts",
											 ALLOCSET_SMALL_SIZES);
	MemoryContextReset(accounts_cxt);
	nodes = NULL;
	nnodes = maxnodes = 0;
	accounts_gen = 0;
	by_id = NULL;

	ai_load_extension_info();
	if (ai_ext_has_relation("ai_accounts"))
	{
		SPI_connect();
		ai_spi_each_row(psprintf("SELECT account_id, parent_id FROM %s.ai_accounts",
								 ai_ext_schema()),
						ai_cache_account_row);
		SPI_finish();
	}
	ctl.keysize = AI_MAX_USER_ID_LEN + 1;
	ctl.entrysize = sizeof(AiAccountSlot);
	ctl.hcxt = accounts_cxt;
	by_id = hash_create("ai_ratelimit accounts", Max(nnodes, 16), &ctl,
						HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
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

static void
ai_accounts_fresh(void)
{
	if (accounts_gen == 0 || accounts_gen != pg_atomic_read_u32(&ai_shared->accounts_gen))
		ai_reload_accounts();
}

/*
 * An account and every account below it, as a text[] for the queries that
 * sum what was filed under them (rulestate.c).  An account not in the tree
 * is its own subtree: rows may name it all the same.
 */
Datum
ai_account_subtree(const char *account_id)
{
	AiAccountSlot *s = NULL;
	Datum	   *ids;
	int			n = 0;

	ai_accounts_fresh();
	ids = palloc(sizeof(Datum) * (nnodes + 1));
	if (strlen(account_id) <= AI_MAX_USER_ID_LEN)
		s = hash_search(by_id, account_id, HASH_FIND, NULL);
	if (s == NULL)
		ids[n++] = CStringGetTextDatum(account_id);
	else
		for (int i = 0; i < nnodes; i++)
		{
			/* below it: its chain passes through it (a chain is short) */
			int			depth = 0;

			for (int j = i; j >= 0 && depth <= AI_MAX_ACCOUNT_DEPTH; j = nodes[j].parent, depth++)
				if (j == s->node)
				{
					ids[n++] = CStringGetTextDatum(nodes[i].id);
					break;
				}
		}
	return PointerGetDatum(construct_array(ids, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * What the use of an account's rules depends on besides records: the tree
 * and memberships as they are now (ai_shared->accounts_gen), for the stamp
 * of their cached use (rulestate.c).
 */
uint32
ai_accounts_stamp(void)
{
	return pg_atomic_read_u32(&ai_shared->accounts_gen);
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
	AiAccountSlot *s;
	int			n = 0;

	if (strlen(account_id) > AI_MAX_USER_ID_LEN)
		return 0;
	ai_accounts_fresh();
	s = hash_search(by_id, account_id, HASH_FIND, NULL);
	if (s == NULL)
		return 0;
	for (int i = s->node; i >= 0; i = nodes[i].parent)
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

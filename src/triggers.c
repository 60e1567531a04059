/*-------------------------------------------------------------------------
 *
 * triggers.c
 *		What the database tells ai_ratelimit: the trigger on its
 *		configuration tables, and DROP EXTENSION.
 *
 * The trigger invalidates the backends' copies of a whole table that
 * changed (ai_table_changed, config.c), bumps the shared generation of what
 * shared memory caches from it, or tells users.c which users changed.  When DROP
 * EXTENSION commits, this database's counters are forgotten (a later
 * CREATE EXTENSION starts from zero) and every session looks the extension
 * up again; a subtransaction that dropped it and rolled back drops nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_extension.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/rel.h"

#include "compact.h"
#include "config.h"
#include "shmem.h"
#include "sweep.h"
#include "triggers.h"
#include "users.h"

PG_FUNCTION_INFO_V1(ai_ratelimit_config_changed);

static bool drop_at_commit = false;	/* this transaction drops the extension */
static SubTransactionId drop_subxid = InvalidSubTransactionId;	/* ... in this one */
static object_access_hook_type prev_object_access_hook = NULL;

/* DROP EXTENSION ai_ratelimit: act when the transaction commits. */
static void
ai_object_access(ObjectAccessType access, Oid classId, Oid objectId,
				 int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == ExtensionRelationId &&
		objectId == get_extension_oid("ai_ratelimit", true))
	{
		drop_at_commit = true;
		drop_subxid = GetCurrentSubTransactionId();
	}
}

/*
 * A subtransaction ends: a DROP EXTENSION that it made is undone by its
 * abort (ROLLBACK TO SAVEPOINT), and passes to its parent by its commit.
 */
static void
ai_drop_subxact(SubXactEvent event, SubTransactionId mySubid,
				  SubTransactionId parentSubid, void *arg)
{
	if (!drop_at_commit || drop_subxid != mySubid)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		drop_at_commit = false;
		drop_subxid = InvalidSubTransactionId;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
		drop_subxid = parentSubid;
}

Datum
ai_ratelimit_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	uint32		bits = 0;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("ai_ratelimit_config_changed() must be called as a trigger")));

	for (int i = 0; i < trigdata->tg_trigger->tgnargs; i++)
	{
		const char *a = trigdata->tg_trigger->tgargs[i];
		bool		limits = strcmp(a, "user_limits") == 0;

		if (strcmp(a, "members") == 0)
		{
			/* a member's accounts: that user; whether any member exists: everyone */
			bits |= AI_GEN_ACCOUNTS;
			if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
				ai_users_all_changed(false);
			else
			{
				ai_users_row_changed(trigdata->tg_trigtuple, trigdata->tg_relation->rd_att, false);
				if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
					ai_users_row_changed(trigdata->tg_newtuple, trigdata->tg_relation->rd_att, false);
			}
		}
		else if (limits || strcmp(a, "user_plans") == 0)
		{
			if (!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
				ai_users_all_changed(limits);
			else
			{
				ai_users_row_changed(trigdata->tg_trigtuple,
									 trigdata->tg_relation->rd_att, limits);
				if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
					ai_users_row_changed(trigdata->tg_newtuple,
										 trigdata->tg_relation->rd_att, limits);
			}
		}
		else if (strcmp(a, "plans") == 0 &&
				 strcmp(RelationGetRelationName(trigdata->tg_relation), "ai_plans") != 0)
		{
			/* the statement trigger of ai_user_plans or ai_user_limits before 1.3 */
			ai_users_all_changed(strcmp(RelationGetRelationName(trigdata->tg_relation),
										"ai_user_limits") == 0);
		}
		else if (strcmp(a, "plans") == 0 || strcmp(a, "prices") == 0 ||
				 strcmp(a, "rules") == 0)
			ai_table_changed(trigdata->tg_relation);
		else if (strcmp(a, "usage") == 0)
			bits |= AI_GEN_USAGE;
		else if (strcmp(a, "accounts") == 0)
			bits |= AI_GEN_ACCOUNTS;
	}
	ai_config_changed(bits);

	return PointerGetDatum(NULL);
}

/* DROP EXTENSION committed: forget this database and what sessions cached of it. */
static void
ai_triggers_xact_callback(XactEvent event, void *arg)
{
	AiXactEnd	end = ai_xact_end_of(event);

	if (end == AI_XACT_NONE)
		return;
	if (drop_at_commit && end == AI_XACT_COMMIT && ai_shared != NULL)
	{
		ai_forget_database(MyDatabaseId);
		ai_compact_forget_database(MyDatabaseId);
		pg_atomic_fetch_add_u32(&ai_shared->ext_gen, 1);
		/* the dropped tables invalidated the caches of whole tables */
		ai_config_bump_at_end(AI_GEN_USAGE | AI_GEN_ACCOUNTS);
		ai_users_all_changed(true);
	}
	drop_at_commit = false;
	drop_subxid = InvalidSubTransactionId;
}

/* With shared_preload_libraries only: the hook that sees DROP EXTENSION. */
void
ai_triggers_init_hooks(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = ai_object_access;
	RegisterSubXactCallback(ai_drop_subxact, NULL);
}

void
ai_triggers_init_xact(void)
{
	RegisterXactCallback(ai_triggers_xact_callback, NULL);
}

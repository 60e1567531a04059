--
-- upgrade: 1.0 installed, then ALTER EXTENSION ... UPDATE walks 1.0 -> ... -> 1.8 -> 1.9
--
CREATE DATABASE ai_upgrade;
\c ai_upgrade
CREATE EXTENSION ai_ratelimit VERSION '1.0';
SELECT extversion FROM pg_extension WHERE extname = 'ai_ratelimit';
-- 1.0 works, and usage recorded under it is kept across the update
SELECT allowed, remaining FROM ai_check_limit('up-1', 'pro');
SELECT ai_record_usage('up-1', 'gpt-4o', 1000, 1000);
UPDATE ai_plans SET burst_limit = 40 WHERE plan = 'pro';
SELECT has_function_privilege('public', 'ai_reset_limits(text)', 'EXECUTE') AS public_may_reset;
-- an application role granted the check under 1.0 keeps it through 1.5,
-- which makes the check one function with every argument named
CREATE ROLE regress_ai_upgrade_app;
GRANT EXECUTE ON FUNCTION ai_check_limit(text, text, numeric) TO regress_ai_upgrade_app;

SELECT * FROM pg_extension_update_paths('ai_ratelimit') WHERE path IS NOT NULL ORDER BY 1, 2;
-- 1.9: a role that may release by id alone under 1.8 gets the release and
-- the extension that name their user instead
ALTER EXTENSION ai_ratelimit UPDATE TO '1.8';
GRANT EXECUTE ON FUNCTION ai_release_reservation(bigint) TO regress_ai_upgrade_app;
-- ai_explain_limits gets two columns (the model's family and price row), and
-- the roles granted it keep it
GRANT EXECUTE ON FUNCTION ai_explain_limits(text, text, text, text) TO regress_ai_upgrade_app;
SELECT count(*) > 0 AS explained_as_in_1_8 FROM ai_explain_limits('up-1', 'gpt-4o-2024-08-06', 'pro');
ALTER EXTENSION ai_ratelimit UPDATE;
SELECT has_function_privilege('regress_ai_upgrade_app', 'ai_explain_limits(text, text, text, text)', 'EXECUTE') AS app_may_explain,
       has_function_privilege('public', 'ai_explain_limits(text, text, text, text)', 'EXECUTE') AS public_may_explain;
SET ROLE regress_ai_upgrade_app;
SELECT DISTINCT model_family, priced_as FROM ai_explain_limits('up-1', 'gpt-4o-2024-08-06', 'pro');
RESET ROLE;
SELECT extversion FROM pg_extension WHERE extname = 'ai_ratelimit';
SELECT has_function_privilege('regress_ai_upgrade_app', 'ai_release_reservation(bigint, text)', 'EXECUTE') AS app_may_release_own,
       has_function_privilege('regress_ai_upgrade_app', 'ai_extend_reservation(bigint, text, integer)', 'EXECUTE') AS app_may_extend,
       has_function_privilege('regress_ai_upgrade_app', 'ai_release_reservation(bigint)', 'EXECUTE') AS app_may_release_any;

-- the same objects as a fresh install
SELECT pg_describe_object(classid, objid, 0) AS object
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'ai_ratelimit')
  AND deptype = 'e'
  -- since PostgreSQL 17 a relation's row type and every array type are
  -- members too; list the types created in their own right, as 15 does
  AND NOT EXISTS (SELECT FROM pg_type t LEFT JOIN pg_class c ON c.oid = t.typrelid
                  WHERE classid = 'pg_type'::regclass AND t.oid = objid
                    AND (t.typcategory = 'A' OR c.relkind <> 'c'))
ORDER BY 1;
-- 1.1: nothing for PUBLIC, the dump filters, capacity counters
SELECT has_function_privilege('public', 'ai_reset_limits(text)', 'EXECUTE') AS public_may_reset;
SELECT has_function_privilege('public', 'ai_check_limit(text, text, numeric, bigint, text, bigint, bigint, text)', 'EXECUTE') AS public_may_check;
SELECT has_function_privilege('regress_ai_upgrade_app', 'ai_check_limit(text, text, numeric, bigint, text, bigint, bigint, text)', 'EXECUTE') AS app_may_check;
SET ROLE regress_ai_upgrade_app;
SELECT allowed FROM ai_check_limit('up-2', 'pro', 1.5, 10);
RESET ROLE;
SELECT has_table_privilege('public', 'ai_usage', 'SELECT') AS public_may_read_usage;
SELECT c.relname, array_position(e.extconfig, c.oid) IS NOT NULL AS dumped,
       e.extcondition[array_position(e.extconfig, c.oid)] AS dump_condition
FROM pg_extension e, pg_class c
WHERE e.extname = 'ai_ratelimit' AND c.oid = ANY (e.extconfig)
ORDER BY 1;
SELECT max_keys > 0 AS has_max_keys, tracked_keys >= 1 AS tracks FROM ai_ratelimit_capacity();
-- data and counters made under 1.0 are still there
SELECT ai_monthly_spend('up-1');
-- 1.7: the usage index has created_at, today's rows are totalled up to an
-- hour, and the spend is the same from the totals
SELECT indexrelid::regclass AS usage_index, pg_get_indexdef(indexrelid) LIKE '%(user_id, day, created_at)' AS with_time
FROM pg_index WHERE indrelid = 'ai_usage'::regclass AND NOT indisprimary ORDER BY 1;
UPDATE ai_usage SET created_at = now() - interval '2 hours' WHERE user_id = 'up-1';
SELECT ai_compact_usage() > 0 AS totalled;
SELECT count(*) AS totals, bool_and(upto IS NOT NULL) AS up_to_an_hour FROM ai_usage_days WHERE user_id = 'up-1';
SELECT ai_monthly_spend('up-1');
SELECT plan, burst_limit, ai_plan_is_seed(p) AS as_seeded FROM ai_plans p ORDER BY plan;
-- 1.4: the seeded prices as installed get their cache write prices and stay seeds
SELECT model, cache_write_usd_per_mtok, cache_write_1h_usd_per_mtok, ai_price_is_seed(p) AS as_seeded
FROM ai_model_prices p ORDER BY model;
SELECT allowed, remaining FROM ai_check_limit('up-1', 'pro');

\c contrib_regression
DROP DATABASE ai_upgrade;
DROP ROLE regress_ai_upgrade_app;

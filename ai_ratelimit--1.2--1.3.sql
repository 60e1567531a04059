/* ai_ratelimit--1.2--1.3.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.3'" to load this file. \quit

-- Per-user configuration is looked up and cached one user at a time: a row
-- trigger tells every session which user changed, and TRUNCATE clears
-- every session's cache.  Before 1.3 any change made every session reload
-- both tables whole.
DROP TRIGGER ai_user_plans_changed ON @extschema@.ai_user_plans;
CREATE TRIGGER ai_user_plans_changed
    AFTER INSERT OR UPDATE OR DELETE ON @extschema@.ai_user_plans
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('user_plans');
CREATE TRIGGER ai_user_plans_truncated
    AFTER TRUNCATE ON @extschema@.ai_user_plans
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('user_plans');

DROP TRIGGER ai_user_limits_changed ON @extschema@.ai_user_limits;
CREATE TRIGGER ai_user_limits_changed
    AFTER INSERT OR UPDATE OR DELETE ON @extschema@.ai_user_limits
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('user_limits');
CREATE TRIGGER ai_user_limits_truncated
    AFTER TRUNCATE ON @extschema@.ai_user_limits
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.ai_ratelimit_config_changed('user_limits');

-- Rows that reach ai_usage other than through ai_record_usage (INSERT, COPY,
-- a restore into a live cluster, logical replication) make the month's
-- spend of their users load again from the tables at their next check.
-- The triggers on the usage tables fire during replication apply too.
CREATE FUNCTION @extschema@.ai_ratelimit_usage_inserted()
RETURNS trigger
AS 'MODULE_PATHNAME', 'ai_ratelimit_usage_inserted'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.ai_ratelimit_usage_inserted() IS
    'trigger: a usage row not written by ai_record_usage makes its user''s cached spend reload';
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_usage_inserted() FROM PUBLIC;
CREATE TRIGGER ai_usage_inserted
    AFTER INSERT ON @extschema@.ai_usage
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_ratelimit_usage_inserted();
ALTER TABLE @extschema@.ai_usage ENABLE ALWAYS TRIGGER ai_usage_inserted;
ALTER TABLE @extschema@.ai_usage ENABLE ALWAYS TRIGGER ai_usage_changed;
ALTER TABLE @extschema@.ai_usage_archive ENABLE ALWAYS TRIGGER ai_usage_archive_changed;

-- Whether the counters are being saved: the last good save and the failures.
CREATE FUNCTION @extschema@.ai_ratelimit_saves(
    OUT last_save timestamptz,
    OUT save_failures bigint)
RETURNS record
AS 'MODULE_PATHNAME', 'ai_ratelimit_saves'
LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ai_ratelimit_saves() IS
    'when the counters were last saved to disk, and how many saves failed since start';
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_saves() FROM PUBLIC;

-- Comments that say what each function does (\df+), as the README does.
COMMENT ON FUNCTION @extschema@.ai_reset_limits(text) IS
    'forget one user''s burst and daily counts and drop its open reservations; recorded spend stays (operators only)';
COMMENT ON FUNCTION @extschema@.ai_ratelimit_status() IS
    'the rows of the view ai_ratelimit_status: live counters of each user of this database';
COMMENT ON FUNCTION @extschema@.ai_ratelimit_stats() IS
    'the rows of the view ai_ratelimit_stats: checks by plan and outcome since the last reset or server start';
COMMENT ON FUNCTION @extschema@.ai_ratelimit_reset_stats() IS
    'start the counts of ai_ratelimit_stats over';
-- The functions behind triggers and dumps, so that every member says what it is.
COMMENT ON FUNCTION @extschema@.ai_ratelimit_config_changed() IS
    'trigger: tells every session that plans, prices, user plans, overrides or usage rows changed, so caches reload';
COMMENT ON FUNCTION @extschema@.ai_model_prices_keep_fallback() IS
    'trigger: refuses to delete or rename the fallback price row ''*'', which prices unlisted models';
COMMENT ON FUNCTION @extschema@.ai_plan_is_seed(@extschema@.ai_plans) IS
    'true for a seeded plan still as installed, which pg_dump leaves out';
COMMENT ON FUNCTION @extschema@.ai_price_is_seed(@extschema@.ai_model_prices) IS
    'true for a seeded price still as installed, which pg_dump leaves out';
COMMENT ON FUNCTION @extschema@.ai_replace_seed() IS
    'trigger: an inserted plan or price whose key is a seed still as installed replaces that seed (how a restore brings back an edited seed)';
COMMENT ON FUNCTION @extschema@.ai_seed_removed() IS
    'trigger: remembers a deleted seeded plan or price in ai_removed_seeds, so a restore deletes it too';
COMMENT ON FUNCTION @extschema@.ai_remove_seed_again() IS
    'trigger: a restored row of ai_removed_seeds deletes the seed that the restore''s CREATE EXTENSION made';
COMMENT ON SEQUENCE @extschema@.ai_usage_id_seq IS
    'ai_ratelimit: ids of ai_usage rows (kept by pg_dump)';

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

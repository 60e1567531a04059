/* ai_ratelimit 1.0 -> 1.1: dumps that restore cleanly, least privilege, capacity counters */

\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.1'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Seeded rows and pg_dump
--
-- CREATE EXTENSION inserts the seeded plans and prices.  A dump must not
-- carry them unchanged (a restore would insert them twice), and an edited
-- seed must replace the fresh one that the restore's CREATE EXTENSION made.
-- So: seeds still as installed are left out of dumps, and inserting a row
-- whose key is a seed still as installed replaces that seed.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_plan_is_seed(p @extschema@.ai_plans)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (p.plan, p.burst_limit, p.burst_window, p.daily_limit, p.monthly_budget_cents)
           IS NOT DISTINCT FROM
           (CASE p.plan
                WHEN 'free'       THEN ROW('free'::text, 5, '1 minute'::interval, 20, NULL::numeric)
                WHEN 'pro'        THEN ROW('pro'::text, 30, '1 minute'::interval, 500, NULL::numeric)
                WHEN 'enterprise' THEN ROW('enterprise'::text, 100, '1 minute'::interval, 10000, NULL::numeric)
            END)
$$;

CREATE FUNCTION @extschema@.ai_price_is_seed(p @extschema@.ai_model_prices)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT (p.model, p.input_usd_per_mtok, p.output_usd_per_mtok, p.cached_input_usd_per_mtok)
           IS NOT DISTINCT FROM
           (CASE p.model
                WHEN 'claude-sonnet-4-6' THEN ROW('claude-sonnet-4-6'::text, 3::numeric, 15::numeric, 0.30::numeric)
                WHEN 'gpt-4o'            THEN ROW('gpt-4o'::text, 2.50::numeric, 10::numeric, 1.25::numeric)
                WHEN '*'                 THEN ROW('*'::text, 3::numeric, 15::numeric, 1.25::numeric)
            END)
$$;

CREATE FUNCTION @extschema@.ai_replace_seed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- a seed name added again is no longer removed; a seed never edited is
    -- replaced by the new row
    IF TG_TABLE_NAME OPERATOR(pg_catalog.=) 'ai_plans' THEN
        DELETE FROM @extschema@.ai_removed_seeds r
         WHERE r.kind OPERATOR(pg_catalog.=) 'plan' AND r.key OPERATOR(pg_catalog.=) NEW.plan;
        UPDATE @extschema@.ai_plans t
           SET burst_limit = NEW.burst_limit, burst_window = NEW.burst_window,
               daily_limit = NEW.daily_limit, monthly_budget_cents = NEW.monthly_budget_cents
         WHERE t.plan OPERATOR(pg_catalog.=) NEW.plan AND @extschema@.ai_plan_is_seed(t);
    ELSE
        DELETE FROM @extschema@.ai_removed_seeds r
         WHERE r.kind OPERATOR(pg_catalog.=) 'price' AND r.key OPERATOR(pg_catalog.=) NEW.model;
        UPDATE @extschema@.ai_model_prices t
           SET input_usd_per_mtok = NEW.input_usd_per_mtok,
               output_usd_per_mtok = NEW.output_usd_per_mtok,
               cached_input_usd_per_mtok = NEW.cached_input_usd_per_mtok
         WHERE t.model OPERATOR(pg_catalog.=) NEW.model AND @extschema@.ai_price_is_seed(t);
    END IF;
    IF FOUND THEN
        RETURN NULL;            -- the seed now holds the new values
    END IF;
    RETURN NEW;
END
$$;

-- Seeds that were deleted: kept here so that a restore deletes them again.
CREATE TABLE @extschema@.ai_removed_seeds (
    kind text NOT NULL CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['plan', 'price'])),
    key  text NOT NULL,
    PRIMARY KEY (kind, key)
);
COMMENT ON TABLE @extschema@.ai_removed_seeds IS
    'ai_ratelimit: seeded plans and prices that were deleted, so a restore deletes them too';

CREATE FUNCTION @extschema@.ai_seed_removed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_TABLE_NAME OPERATOR(pg_catalog.=) 'ai_plans' THEN
        IF OLD.plan OPERATOR(pg_catalog.=) ANY (ARRAY['free', 'pro', 'enterprise']) THEN
            INSERT INTO @extschema@.ai_removed_seeds VALUES ('plan', OLD.plan) ON CONFLICT DO NOTHING;
        END IF;
    ELSIF OLD.model OPERATOR(pg_catalog.=) ANY (ARRAY['claude-sonnet-4-6', 'gpt-4o']) THEN
        INSERT INTO @extschema@.ai_removed_seeds VALUES ('price', OLD.model) ON CONFLICT DO NOTHING;
    END IF;
    RETURN OLD;
END
$$;

-- a restored tombstone removes the seed that the restore's CREATE EXTENSION made
CREATE FUNCTION @extschema@.ai_remove_seed_again()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.kind OPERATOR(pg_catalog.=) 'plan' THEN
        DELETE FROM @extschema@.ai_plans t
         WHERE t.plan OPERATOR(pg_catalog.=) NEW.key AND @extschema@.ai_plan_is_seed(t);
    ELSE
        DELETE FROM @extschema@.ai_model_prices t
         WHERE t.model OPERATOR(pg_catalog.=) NEW.key AND @extschema@.ai_price_is_seed(t);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER ai_plans_seed_removed
    AFTER DELETE ON @extschema@.ai_plans
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_seed_removed();
CREATE TRIGGER ai_model_prices_seed_removed
    AFTER DELETE ON @extschema@.ai_model_prices
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_seed_removed();
CREATE TRIGGER ai_removed_seeds_apply
    AFTER INSERT ON @extschema@.ai_removed_seeds
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_remove_seed_again();

CREATE TRIGGER ai_plans_replace_seed
    BEFORE INSERT ON @extschema@.ai_plans
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_replace_seed();
CREATE TRIGGER ai_model_prices_replace_seed
    BEFORE INSERT ON @extschema@.ai_model_prices
    FOR EACH ROW EXECUTE FUNCTION @extschema@.ai_replace_seed();

SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_plans',
    'WHERE NOT @extschema@.ai_plan_is_seed(ai_plans)');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_model_prices',
    'WHERE NOT @extschema@.ai_price_is_seed(ai_model_prices)');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_removed_seeds', '');
-- the usage ids go on where they were
SELECT pg_catalog.pg_extension_config_dump('@extschema@.ai_usage_id_seq', '');

-- ---------------------------------------------------------------------------
-- Capacity counters of the shared hash
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_ratelimit_capacity(
    OUT max_keys integer,
    OUT tracked_keys bigint,
    OUT reclaimed bigint,
    OUT full_events bigint,
    OUT max_reservations integer,
    OUT open_reservations integer)
RETURNS record
AS 'MODULE_PATHNAME', 'ai_ratelimit_capacity'
LANGUAGE C VOLATILE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.ai_ratelimit_capacity() IS
    'shared-memory capacity: keys in use, reclaimed, refusals or uncounted requests when full';

CREATE FUNCTION @extschema@.ai_ratelimit_verify()
RETURNS SETOF text
AS 'MODULE_PATHNAME', 'ai_ratelimit_verify'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.ai_ratelimit_verify() IS
    'problems found in the shared counters and reservations (none when consistent)';

-- ---------------------------------------------------------------------------
-- Least privilege: nothing for PUBLIC.  The README says what to grant an
-- application role; plans, prices, usage and resets stay with the owner.
-- ---------------------------------------------------------------------------

REVOKE ALL ON FUNCTION @extschema@.ai_check_limit(text, text, numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_peek_limit(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_reset_limits(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_record_usage(text, text, bigint, bigint, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_monthly_spend(text, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_capacity() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_verify() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_ratelimit_config_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_model_prices_keep_fallback() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_replace_seed() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_seed_removed() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_remove_seed_again() FROM PUBLIC;
REVOKE ALL ON @extschema@.ai_plans, @extschema@.ai_user_plans, @extschema@.ai_model_prices,
              @extschema@.ai_usage, @extschema@.ai_usage_archive, @extschema@.ai_usage_daily,
              @extschema@.ai_removed_seeds
    FROM PUBLIC;

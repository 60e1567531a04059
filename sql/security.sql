--
-- security: least privilege for an application role, and a hostile
-- search_path that never reaches the extension's internals
--
CREATE ROLE regress_ai_app LOGIN;
-- what the README tells an operator to grant an application role
GRANT EXECUTE ON FUNCTION
    ai_check_limit(text, text, numeric, bigint, text, bigint, bigint, text),
    ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint, text),
    ai_peek_limit(text, text),
    ai_record_usage(text, text, bigint, bigint, bigint, bigint, bigint, bigint, text),
    ai_monthly_spend(text, date)
TO regress_ai_app;
INSERT INTO ai_user_plans VALUES ('sec-1', 'pro');

SET ROLE regress_ai_app;
-- it can check, record and read spend ...
SELECT allowed, remaining FROM ai_check_limit('sec-1');
SELECT allowed, remaining FROM ai_enforce_limit('sec-1', 'pro');
SELECT allowed, remaining FROM ai_peek_limit('sec-1');
SELECT ai_record_usage('sec-1', 'gpt-4o', 1000, 1000);
SELECT ai_monthly_spend('sec-1');
SELECT allowed, reservation_id > 0 AS reserved FROM ai_check_limit('sec-1', 'ttl', 1);
-- ... and cannot change plans or prices, move users, read or delete usage,
-- or reset anyone's limits
\set VERBOSITY sqlstate
UPDATE ai_plans SET burst_limit = 1000000 WHERE plan = 'pro';
INSERT INTO ai_plans (plan, burst_limit) VALUES ('mine', 1000000);
DELETE FROM ai_plans WHERE plan = 'free';
INSERT INTO ai_user_plans VALUES ('sec-2', 'enterprise');
UPDATE ai_user_plans SET plan = 'enterprise' WHERE user_id = 'sec-1';
UPDATE ai_model_prices SET output_usd_per_mtok = 0;
DELETE FROM ai_usage;
TRUNCATE ai_usage;
SELECT count(*) FROM ai_usage;
UPDATE ai_usage SET cost_cents = 0;
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens, cached_input_tokens, cost_cents)
VALUES (now(), current_date, 'sec-1', 'x', 'x', 0, 0, 0, 0);
SELECT ai_reset_limits('sec-1');
SELECT * FROM ai_ratelimit_capacity();
\set VERBOSITY default
RESET ROLE;
SELECT count(*) AS usage_rows, ai_monthly_spend('sec-1') FROM ai_usage WHERE user_id = 'sec-1';
SELECT plan, burst_limit FROM ai_plans WHERE plan IN ('pro', 'free') ORDER BY plan;

-- a hostile search_path: look-alike functions and operators ahead of
-- pg_catalog, each raising a NOTICE if it ever runs
CREATE SCHEMA evil;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil now() ran'; RETURN pg_catalog.now(); END $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil clock_timestamp() ran'; RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil lower() ran'; RETURN pg_catalog.lower($1); END $$;
CREATE FUNCTION evil.date_trunc(text, timestamptz) RETURNS timestamptz LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil date_trunc() ran'; RETURN pg_catalog.date_trunc($1, $2); END $$;
CREATE FUNCTION evil.date_part(text, interval) RETURNS double precision LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil date_part() ran'; RETURN pg_catalog.date_part($1, $2); END $$;
CREATE FUNCTION evil.ceil(double precision) RETURNS double precision LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil ceil() ran'; RETURN pg_catalog.ceil($1); END $$;
CREATE FUNCTION evil.scale(numeric) RETURNS integer LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil scale() ran'; RETURN pg_catalog.scale($1); END $$;
CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil = ran'; RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
CREATE FUNCTION evil.textne(text, text) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil <> ran'; RETURN pg_catalog.textne($1, $2); END $$;
CREATE OPERATOR evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.textne);
CREATE FUNCTION evil.datege(date, date) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil >= ran'; RETURN pg_catalog.date_ge($1, $2); END $$;
CREATE OPERATOR evil.>= (LEFTARG = date, RIGHTARG = date, FUNCTION = evil.datege);
CREATE FUNCTION evil.datelt(date, date) RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil < ran'; RETURN pg_catalog.date_lt($1, $2); END $$;
CREATE OPERATOR evil.< (LEFTARG = date, RIGHTARG = date, FUNCTION = evil.datelt);
CREATE FUNCTION evil.f8mul(double precision, integer) RETURNS double precision LANGUAGE plpgsql AS
$$ BEGIN RAISE NOTICE 'evil * ran'; RETURN $1 OPERATOR(pg_catalog.*) $2; END $$;
CREATE OPERATOR evil.* (LEFTARG = double precision, RIGHTARG = integer, FUNCTION = evil.f8mul);
GRANT USAGE ON SCHEMA evil TO PUBLIC;

-- the look-alikes do run for ordinary SQL under this path
SET search_path = evil, pg_catalog, public;
SELECT 'a'::text = 'a'::text AS evil_is_live;

-- caches are reloaded (plans, user plans, prices, spend) under the hostile
-- path, as the superuser and as the application role: no NOTICE may appear
UPDATE public.ai_plans SET daily_limit = 500 WHERE plan OPERATOR(pg_catalog.=) 'pro';
UPDATE public.ai_model_prices SET output_usd_per_mtok = 10 WHERE model OPERATOR(pg_catalog.=) 'gpt-4o';
SELECT allowed, remaining FROM public.ai_check_limit('sec-1');
SELECT allowed FROM public.ai_check_limit('sec-3', 'capped', 1);
SELECT public.ai_record_usage('sec-3', 'gpt-4o', 1000, 1000);
SELECT public.ai_record_usage('sec-3', 'not-priced', 10, 10);
SELECT public.ai_monthly_spend('sec-3');
SELECT allowed, remaining FROM public.ai_peek_limit('sec-3', 'pro');
INSERT INTO public.ai_plans VALUES ('free', 5, '1 minute', 20, NULL);
INSERT INTO public.ai_plans VALUES ('sec-plan', 5, '1 minute', 20, NULL);
DELETE FROM public.ai_model_prices WHERE model OPERATOR(pg_catalog.=) '*';
SET ROLE regress_ai_app;
SET search_path = evil, pg_catalog, public;
SELECT allowed, remaining FROM public.ai_check_limit('sec-1');
SELECT public.ai_record_usage('sec-1', 'gpt-4o', 1, 1);
SELECT public.ai_monthly_spend('sec-1');
RESET ROLE;
RESET search_path;
DROP SCHEMA evil CASCADE;
DROP OWNED BY regress_ai_app;
DROP ROLE regress_ai_app;

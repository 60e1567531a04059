--
-- setup: the extension installs with its seeded configuration
--
CREATE EXTENSION ai_ratelimit;
SELECT extversion FROM pg_extension WHERE extname = 'ai_ratelimit';

SELECT plan, burst_limit, burst_window, daily_limit, monthly_budget_cents
FROM ai_plans ORDER BY burst_limit;

SELECT * FROM ai_model_prices ORDER BY model;

SELECT count(*) AS user_plans FROM ai_user_plans;

-- every object is prefixed ai_
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

-- the GUCs and their defaults
SELECT name, setting, unit, context FROM pg_settings
WHERE name LIKE 'ai_ratelimit.%' ORDER BY name;

-- calls a check n times in one statement and returns every answer
CREATE FUNCTION checks(u text, p text, n int, est numeric DEFAULT 0)
RETURNS SETOF ai_limit_result LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        RETURN QUERY SELECT * FROM ai_check_limit(u, p, est);
    END LOOP;
END $$;

-- the next local midnight of ai_ratelimit.timezone
CREATE FUNCTION next_midnight() RETURNS timestamptz LANGUAGE sql AS $$
    SELECT (date_trunc('day', clock_timestamp() AT TIME ZONE current_setting('ai_ratelimit.timezone'))
            + interval '1 day') AT TIME ZONE current_setting('ai_ratelimit.timezone')
$$;

-- ai_ratelimit 1.4 -> 1.5
\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.5'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- One check function with every argument named, so that an application can
-- name the model: ai_check_limit(user, plan, model => ..., input_tokens =>
-- ..., max_output_tokens => ...) reserves at least what the call can cost at
-- the model's price.  The forms of earlier versions (2, 3 and 4 arguments by
-- position) resolve to it unchanged: several functions of one name with
-- defaults could not all take them.  EXECUTE granted on the old forms is
-- granted on the new ones before the old ones go.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_check_limit(
    user_id text,
    plan text DEFAULT NULL,
    estimated_cost_cents numeric DEFAULT 0,
    estimated_tokens bigint DEFAULT NULL,
    model text DEFAULT NULL,
    input_tokens bigint DEFAULT NULL,
    max_output_tokens bigint DEFAULT NULL)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_check_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint, text, bigint, bigint) IS
    'check and count one AI request; with a model and its token counts, the reservation is at least what the call can cost at the model''s price';

CREATE FUNCTION @extschema@.ai_enforce_limit(
    user_id text,
    plan text DEFAULT NULL,
    estimated_cost_cents numeric DEFAULT 0,
    estimated_tokens bigint DEFAULT NULL,
    model text DEFAULT NULL,
    input_tokens bigint DEFAULT NULL,
    max_output_tokens bigint DEFAULT NULL)
RETURNS @extschema@.ai_limit_result
AS 'MODULE_PATHNAME', 'ai_enforce_limit'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint) IS
    'like ai_check_limit, but a refused request raises SQLSTATE 53400';

REVOKE ALL ON FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint, text, bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint, text, bigint, bigint) FROM PUBLIC;

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT DISTINCT p.proname::text AS fn, a.grantee, a.is_grantable
        FROM pg_catalog.pg_proc p, LATERAL pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid IN ('@extschema@.ai_check_limit(text, text, numeric)'::pg_catalog.regprocedure,
                        '@extschema@.ai_check_limit(text, text, numeric, bigint)'::pg_catalog.regprocedure,
                        '@extschema@.ai_enforce_limit(text, text, numeric)'::pg_catalog.regprocedure,
                        '@extschema@.ai_enforce_limit(text, text, numeric, bigint)'::pg_catalog.regprocedure)
          AND a.privilege_type = 'EXECUTE'
          AND a.grantee <> p.proowner
    LOOP
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION @extschema@.%I(text, text, numeric, bigint, text, bigint, bigint) TO %s%s',
            g.fn,
            CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END
$$;

DROP FUNCTION @extschema@.ai_check_limit(text, text, numeric);
DROP FUNCTION @extschema@.ai_check_limit(text, text, numeric, bigint);
DROP FUNCTION @extschema@.ai_enforce_limit(text, text, numeric);
DROP FUNCTION @extschema@.ai_enforce_limit(text, text, numeric, bigint);

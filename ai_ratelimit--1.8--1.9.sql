-- ai_ratelimit 1.8 -> 1.9
\echo Use "ALTER EXTENSION ai_ratelimit UPDATE TO '1.9'" to load this file. \quit

-- ---------------------------------------------------------------------------
-- The reservation is the contract.  An application releases and extends
-- reservations by id and user: an id names one user's request, and another
-- user's id releases nothing.  The one-argument release stays for the
-- owner (an operator giving back an estimate by id alone); on update, every
-- role that may execute it gets the two-argument form instead.
-- ---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.ai_release_reservation(reservation_id bigint, user_id text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'ai_release_reservation'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_release_reservation(bigint, text) IS
    'give back the estimate of one request of this user (its AI call failed or was abandoned): on the user and every account its check charged; another user''s reservation is not touched';
REVOKE ALL ON FUNCTION @extschema@.ai_release_reservation(bigint, text) FROM PUBLIC;

CREATE FUNCTION @extschema@.ai_extend_reservation(reservation_id bigint, user_id text, seconds integer)
RETURNS timestamptz
AS 'MODULE_PATHNAME', 'ai_extend_reservation'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.ai_extend_reservation(bigint, text, integer) IS
    'hold the estimate of a request in flight until seconds from now (never shorter), on the user and every account its check charged; the new expiry, or NULL when it is no longer open';
REVOKE ALL ON FUNCTION @extschema@.ai_extend_reservation(bigint, text, integer) FROM PUBLIC;

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN
        SELECT a.grantee, a.is_grantable
        FROM pg_catalog.pg_proc p, LATERAL pg_catalog.aclexplode(p.proacl) a
        WHERE p.oid OPERATOR(pg_catalog.=) pg_catalog.to_regprocedure('@extschema@.ai_release_reservation(bigint)')
          AND a.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
          AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
    LOOP
        EXECUTE pg_catalog.format(
            'GRANT EXECUTE ON FUNCTION @extschema@.ai_release_reservation(bigint, text), @extschema@.ai_extend_reservation(bigint, text, integer) TO %s%s',
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END,
            CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        EXECUTE pg_catalog.format(
            'REVOKE EXECUTE ON FUNCTION @extschema@.ai_release_reservation(bigint) FROM %s',
            CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC' ELSE g.grantee::pg_catalog.regrole::text END);
    END LOOP;
END
$$;
COMMENT ON FUNCTION @extschema@.ai_release_reservation(bigint) IS
    'give back the estimate of a request by its id alone, whoever''s it is (for the owner; applications use ai_release_reservation(reservation_id, user_id))';

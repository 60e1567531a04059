--
-- contract: the reservation is the contract.  A release or an extension
-- names its user; a record is idempotent by reservation id; a record
-- without an id settles only its own transaction's reservation.
--
INSERT INTO ai_plans (plan, monthly_budget_cents) VALUES ('k-ten', 10);
SELECT ai_ratelimit_reset_stats();

-- another user's id releases nothing: the estimate stays held
SELECT reservation_id AS k1 FROM ai_check_limit('k-alice', 'k-ten', 6) \gset
\set VERBOSITY sqlstate
SELECT ai_release_reservation(:k1, 'k-mallory') AS released;
\set VERBOSITY default
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'k-alice';
SELECT allowed, limited_by FROM ai_check_limit('k-alice', 'k-ten', 6);
-- its own user releases it
SELECT ai_release_reservation(:k1, 'k-alice') AS released;
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'k-alice';
-- bad input: a NULL user releases nothing (STRICT), an empty one is refused
SELECT ai_release_reservation(:k1, NULL) IS NULL AS nothing;
SELECT ai_release_reservation(:k1, '');

-- a record is idempotent by reservation id: the retry of a record whose
-- COMMIT was lost returns the first cost, stores and charges nothing
SELECT reservation_id AS k2 FROM ai_check_limit('k-bob', 'k-ten', 3) \gset
SELECT ai_record_usage('k-bob', 'gpt-4o', 0, 2000, 0, :k2) AS cost;
\set VERBOSITY sqlstate
SELECT ai_record_usage('k-bob', 'gpt-4o', 0, 2000, 0, :k2) AS cost_again;
-- whatever the retry says it used: the first record stands
SELECT ai_record_usage('k-bob', 'gpt-4o', 0, 9000, 0, :k2) AS cost_changed;
\set VERBOSITY default
SELECT count(*) AS rows, sum(cost_cents) AS cents FROM ai_usage WHERE user_id = 'k-bob';
SELECT ai_monthly_spend('k-bob');
-- twice in one transaction: the second is a repeat too
SELECT reservation_id AS k3 FROM ai_check_limit('k-bob', 'k-ten', 1) \gset
BEGIN;
SELECT ai_record_usage('k-bob', 'gpt-4o', 0, 500, 0, :k3) AS cost;
\set VERBOSITY sqlstate
SELECT ai_record_usage('k-bob', 'gpt-4o', 0, 500, 0, :k3) AS cost_again;
\set VERBOSITY default
COMMIT;
SELECT count(*) AS rows, sum(cost_cents) AS cents FROM ai_usage WHERE user_id = 'k-bob';
-- a record rolled back is not a first record: the retry records
SELECT reservation_id AS k4 FROM ai_check_limit('k-bob', 'k-ten', 1) \gset
BEGIN;
SELECT ai_record_usage('k-bob', 'gpt-4o', 0, 500, 0, :k4) AS cost;
ROLLBACK;
SELECT ai_record_usage('k-bob', 'gpt-4o', 0, 500, 0, :k4) AS cost;
SELECT count(*) AS rows, sum(cost_cents) AS cents FROM ai_usage WHERE user_id = 'k-bob';
SELECT reserved_cents, open_reservations FROM ai_ratelimit_status WHERE user_id = 'k-bob';

-- a record naming a reservation that was released is a late record:
-- counted in full, with a WARNING
SELECT reservation_id AS k5 FROM ai_check_limit('k-carol', 'k-ten', 2) \gset
SELECT ai_release_reservation(:k5, 'k-carol') AS released;
\set VERBOSITY sqlstate
SELECT ai_record_usage('k-carol', 'gpt-4o', 0, 1000, 0, :k5) AS cost;
-- another user's id too: that user's estimate stays held
SELECT reservation_id AS k6 FROM ai_check_limit('k-dave', 'k-ten', 4) \gset
SELECT ai_record_usage('k-carol', 'gpt-4o', 0, 1000, 0, :k6) AS cost;
\set VERBOSITY default
SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'k-dave';
SELECT ai_monthly_spend('k-carol');
SELECT limited_by, requests FROM ai_ratelimit_stats
WHERE plan IS NULL AND limited_by IN ('late_record', 'repeated_record') ORDER BY 1;

-- a record without an id settles a reservation of its own transaction,
-- never another request's
SELECT reservation_id IS NOT NULL AS held FROM ai_check_limit('k-erin', 'k-ten', 4);
SELECT ai_record_usage('k-erin', 'gpt-4o', 0, 1000) AS cost;
SELECT reserved_cents, open_reservations FROM ai_ratelimit_status WHERE user_id = 'k-erin';
BEGIN;
SELECT reservation_id IS NOT NULL AS held FROM ai_check_limit('k-erin', 'k-ten', 3);
SELECT ai_record_usage('k-erin', 'gpt-4o', 0, 1000) AS cost;
COMMIT;
SELECT reserved_cents, open_reservations FROM ai_ratelimit_status WHERE user_id = 'k-erin';

-- a long call keeps its hold: the expiry moves, never back, and only for
-- its own user
SELECT reservation_id AS k7 FROM ai_check_limit('k-frank', 'k-ten', 2) \gset
SELECT ai_extend_reservation(:k7, 'k-frank', 3600) BETWEEN now() + interval '59 minutes'
       AND clock_timestamp() + interval '1 hour' AS held_an_hour;
SELECT ai_extend_reservation(:k7, 'k-frank', 60) > clock_timestamp() + interval '59 minutes' AS never_shorter;
\set VERBOSITY sqlstate
SELECT ai_extend_reservation(:k7, 'k-mallory', 3600) IS NULL AS not_mallorys;
\set VERBOSITY default
SELECT ai_extend_reservation(:k7, 'k-frank', 0);
SELECT ai_extend_reservation(:k7, 'k-frank', 32 * 86400);
SELECT ai_record_usage('k-frank', 'gpt-4o', 0, 1000, 0, :k7) AS cost;
\set VERBOSITY sqlstate
SELECT ai_extend_reservation(:k7, 'k-frank', 60) IS NULL AS settled;
\set VERBOSITY default

-- applications get the two-argument forms; the one-argument release is
-- for the owner
SELECT has_function_privilege('public', 'ai_release_reservation(bigint, text)', 'EXECUTE') AS public_may_release,
       has_function_privilege('public', 'ai_extend_reservation(bigint, text, integer)', 'EXECUTE') AS public_may_extend;

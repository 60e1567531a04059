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

-- a record charges what its check charged: the accounts as of the check
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
VALUES ('k-model', 10, 10), ('k-other', 10, 10);
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('k-open', NULL, NULL);
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('k-org', NULL), ('k-red', 'k-org'), ('k-blue', 'k-org');
INSERT INTO ai_account_members (account_id, user_id, is_default)
VALUES ('k-red', 'k-gus', true), ('k-red', 'k-hal', true), ('k-blue', 'k-hal', false);
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value) VALUES
    (951, 'account', 'k-red', 'cents', 'month', 6), (952, 'account', 'k-blue', 'cents', 'month', 6);
CREATE FUNCTION k_held(a text) RETURNS numeric LANGUAGE sql AS $$
    SELECT coalesce(sum(reserved_cents), 0) FROM ai_account_status WHERE account_id = a $$;
-- gus checks on red; while his call runs he is moved to blue
SELECT reservation_id AS k8 FROM ai_check_limit('k-gus', 'k-open', 5) \gset
UPDATE ai_account_members SET account_id = 'k-blue' WHERE user_id = 'k-gus';
SELECT k_held('k-red') AS red_held, k_held('k-blue') AS blue_held;
SELECT ai_record_usage('k-gus', 'k-model', 2000, 2000, 0, :k8) AS cost;
-- filed and counted on red, which admitted the call; nothing held anywhere
SELECT account_id, cost_cents FROM ai_usage WHERE user_id = 'k-gus';
SELECT k_held('k-red') AS red_held, k_held('k-blue') AS blue_held,
       ai_account_spend('k-red') AS red, ai_account_spend('k-blue') AS blue;
-- blue never admitted it: its budget is whole
SELECT allowed, ai_release_reservation(reservation_id, 'k-gus') AS released
FROM ai_check_limit('k-gus', 'k-open', 6);
-- hal checks on blue by name; a record naming red is charged on blue all the same
SELECT reservation_id AS k9 FROM ai_check_limit('k-hal', 'k-open', 2, account => 'k-blue') \gset
\set VERBOSITY sqlstate
SELECT ai_record_usage('k-hal', 'k-model', 500, 500, 0, :k9, account => 'k-red') AS cost;
\set VERBOSITY default
SELECT account_id, cost_cents FROM ai_usage WHERE user_id = 'k-hal';
-- hal checks on blue by name and leaves blue while the call runs: the
-- record naming blue is still his check's, and is not lost
SELECT reservation_id AS k10 FROM ai_check_limit('k-hal', 'k-open', 1, account => 'k-blue') \gset
DELETE FROM ai_account_members WHERE user_id = 'k-hal' AND account_id = 'k-blue';
SELECT ai_record_usage('k-hal', 'k-model', 250, 250, 0, :k10, account => 'k-blue') AS cost;
-- a late record naming an account he left: a WARNING, filed under his default
\set VERBOSITY sqlstate
SELECT ai_record_usage('k-hal', 'k-model', 250, 250, 0, :k10 + 1, account => 'k-blue') AS cost;
\set VERBOSITY default
SELECT account_id, cost_cents FROM ai_usage WHERE user_id = 'k-hal' ORDER BY id;
SELECT limited_by, requests FROM ai_ratelimit_stats
WHERE plan IS NULL AND limited_by = 'misnamed_record';
-- a record of another model than its check's counts under the rules of the
-- model it names (the spend is real); its check's estimate is given back
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (953, 'plan', 'k-open', 'k-other', 'cents', 'day', 3),
    (954, 'plan', 'k-open', 'k-model', 'cents', 'day', 100);
SELECT reservation_id AS k11 FROM ai_check_limit('k-ida', 'k-open', model => 'k-model',
       input_tokens => 1000, max_output_tokens => 1000) \gset
SELECT ai_record_usage('k-ida', 'k-other', 1000, 1000, 0, :k11) AS cost;
SELECT rule_id, used, held FROM ai_explain_limits('k-ida', NULL, 'k-open')
WHERE rule_id IN (953, 954) ORDER BY 1;
-- 2 of its 3 cents used: a call that may cost 2 more is refused
SELECT allowed, limited_by FROM ai_check_limit('k-ida', 'k-open', model => 'k-other',
       input_tokens => 1000, max_output_tokens => 1000);

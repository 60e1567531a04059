--
-- shared_budgets: rules on accounts and on members (1.8).  A check charges
-- the user's own limits, the member rules of the user in the account and
-- the rules of the account and every account above it, all in one step:
-- all pass and are counted, or none.  Records, releases and rollbacks act
-- on every level.
--
SET ai_ratelimit.reservation_ttl = 600;
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('sb', NULL, NULL);
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('sb-model', 10, 10);
INSERT INTO ai_accounts (account_id, parent_id, name) VALUES
    ('sb-org', NULL, 'Org'), ('sb-red', 'sb-org', 'Red team'), ('sb-blue', 'sb-org', 'Blue team'),
    ('sb-other', NULL, 'Another org');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES
    ('sb-red', 'sb-ann', true), ('sb-red', 'sb-ben', true), ('sb-blue', 'sb-cat', true),
    ('sb-blue', 'sb-ann', false), ('sb-org', 'sb-dan', true), ('sb-other', 'sb-eve', true);
-- the organisation 10 cents a month, the red team 6, ben 2 a day inside it
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value) VALUES
    (801, 'account', 'sb-org', 'cents', 'month', 10),
    (802, 'account', 'sb-red', 'cents', 'month', 6);
INSERT INTO ai_rules (rule_id, scope, scope_id, member_id, metric, "window", max_value) VALUES
    (803, 'member', 'sb-red', 'sb-ben', 'cents', 'day', 2);
-- a member rule names its member, and only a member rule does
\set VERBOSITY terse
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('member', 'sb-red', 'cents', 'day', 1);
INSERT INTO ai_rules (scope, scope_id, member_id, metric, "window", max_value) VALUES ('account', 'sb-red', 'sb-ben', 'cents', 'day', 1);
\set VERBOSITY default
-- what a call of each level sees: the rules that bind it, used and held
CREATE FUNCTION sb_levels(u text, acct text DEFAULT NULL)
RETURNS TABLE (rule_id integer, scope text, scope_id text, max_value numeric, used numeric, held numeric)
LANGUAGE sql AS $$
    SELECT rule_id, scope, scope_id, max_value, used, held
    FROM ai_explain_limits(u, NULL, 'sb', acct) WHERE rule_id IS NOT NULL ORDER BY rule_id
$$;

-- ann (red team) holds 5 cents: on red and on the organisation
SELECT allowed, reservation_id > 0 AS held, reservation_id AS ann5_resv FROM ai_check_limit('sb-ann', 'sb', 5) \gset
SELECT :'allowed' AS allowed, :'held' AS held;
SELECT * FROM sb_levels('sb-ann');
-- ben in the same team: 5 + 2 is over the team's 6, held by requests in flight
SELECT allowed, limited_by, error, retry_after FROM ai_check_limit('sb-ben', 'sb', 2);
-- ben's own 2 a day can never take 3: no retry can pass
SELECT allowed, limited_by, error, retry_after, retryable FROM ai_check_limit('sb-ben', 'sb', 3);
-- cat (blue team) has 5 left of the organisation's 10, not 6
SELECT allowed, limited_by, error FROM ai_check_limit('sb-cat', 'sb', 6);
SELECT allowed, reservation_id AS cat_resv FROM ai_check_limit('sb-cat', 'sb', 5) \gset
SELECT :'allowed' AS allowed;
-- the organisation is full: dan (a member of the organisation itself) gets nothing
SELECT allowed, limited_by, error FROM ai_check_limit('sb-dan', 'sb', 0.01);
-- a refusal by an account in ai_enforce_limit's stable form
DO $$
DECLARE
    state text;
    hint text;
    cons text;
BEGIN
    PERFORM ai_enforce_limit('sb-dan', 'sb', 0.01);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, hint = PG_EXCEPTION_HINT,
                            cons = CONSTRAINT_NAME;
    RAISE NOTICE '% % %', state, cons, hint::jsonb - 'reset_at';
END $$;
-- another organisation is not touched
SELECT allowed FROM ai_check_limit('sb-eve', 'sb', 5);

-- ann records 3 cents on her default account: her 5 held becomes 3 spent, on every level
SELECT ai_record_usage('sb-ann', 'sb-model', 1500, 1500, 0, :ann5_resv);
SELECT * FROM sb_levels('sb-ann');
SELECT user_id, account_id, cost_cents FROM ai_usage WHERE user_id LIKE 'sb-%' ORDER BY 1;
SELECT ai_account_spend('sb-org') AS org, ai_account_spend('sb-red') AS red,
       ai_account_spend('sb-blue') AS blue;
-- 10 - 3 spent - 5 held by cat: ben may take 2
SELECT allowed FROM ai_check_limit('sb-ben', 'sb', 2);
SELECT allowed, limited_by FROM ai_check_limit('sb-ben', 'sb', 0.01);
SELECT * FROM sb_levels('sb-ben');

-- cat's call failed: the release gives back its estimate on blue and on the organisation
SELECT ai_release_reservation(:cat_resv) AS released;
SELECT * FROM sb_levels('sb-cat');
-- and only once (the NOTICE names the id)
SET client_min_messages = warning;
SELECT ai_release_reservation(:cat_resv) AS released;
RESET client_min_messages;
SELECT * FROM sb_levels('sb-cat');
-- what each account holds now: ann's 5 on red settled, ben's 2 held on red and the organisation
SELECT * FROM ai_account_status WHERE account_id LIKE 'sb-%' ORDER BY 1;

-- a check rolled back holds nothing, at any level; one rolled back to a savepoint neither
BEGIN;
SELECT allowed FROM ai_check_limit('sb-cat', 'sb', 4);
SELECT * FROM sb_levels('sb-cat');
SAVEPOINT s;
SELECT allowed FROM ai_check_limit('sb-dan', 'sb', 1);
ROLLBACK TO s;
SELECT * FROM sb_levels('sb-dan');
ROLLBACK;
SELECT * FROM sb_levels('sb-cat');

-- a record rolled back: the estimate it settled is held again, on every level
SELECT reservation_id AS cat_resv FROM ai_check_limit('sb-cat', 'sb', 4) \gset
BEGIN;
SELECT ai_record_usage('sb-cat', 'sb-model', 500, 500, 0, :cat_resv);
SELECT * FROM sb_levels('sb-cat');
ROLLBACK;
SELECT * FROM sb_levels('sb-cat');
-- committed: 1 cent spent, the 4 held are gone, on blue and the organisation
SELECT ai_record_usage('sb-cat', 'sb-model', 500, 500, 0, :cat_resv);
SELECT * FROM sb_levels('sb-cat');

-- ann checks for the blue team by name: blue and the organisation, not red
SELECT * FROM sb_levels('sb-ann', 'sb-blue');
SELECT allowed, reservation_id AS ann_resv FROM ai_check_limit('sb-ann', 'sb', 1, account => 'sb-blue') \gset
SELECT :'allowed' AS allowed;
SELECT ai_record_usage('sb-ann', 'sb-model', 500, 500, 0, :ann_resv, account => 'sb-blue');
SELECT user_id, account_id, cost_cents FROM ai_usage WHERE user_id LIKE 'sb-%' ORDER BY 1, 2;
SELECT ai_account_spend('sb-org') AS org, ai_account_spend('sb-red') AS red,
       ai_account_spend('sb-blue') AS blue;
SELECT * FROM sb_levels('sb-ann', 'sb-blue');
-- not a member, an account that does not exist, an empty name
SELECT allowed FROM ai_check_limit('sb-cat', 'sb', 1, account => 'sb-red');
SELECT ai_record_usage('sb-cat', 'sb-model', 1, 1, account => 'sb-red');
SELECT allowed FROM ai_check_limit('sb-cat', 'sb', 1, account => 'nowhere');
SELECT allowed FROM ai_check_limit('sb-cat', 'sb', 1, account => '');

-- a row written another way, filed under an account, counts at once
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents, account_id)
VALUES (now(), timezone('UTC', now())::date, 'sb-dan', 'sb-model', 'sb-model', 0, 0, 0, 0.5, 'sb-org');
SELECT * FROM sb_levels('sb-dan');
-- a team moved to another organisation takes its spend along
UPDATE ai_accounts SET parent_id = 'sb-other' WHERE account_id = 'sb-blue';
SELECT * FROM sb_levels('sb-dan');
SELECT * FROM sb_levels('sb-cat');
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value) VALUES
    (804, 'account', 'sb-other', 'cents', 'month', 7);
SELECT * FROM sb_levels('sb-cat');
SELECT allowed, limited_by, error FROM ai_check_limit('sb-cat', 'sb', 3);

-- a requests rule on an account counts checks, and gives back a rolled back one
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value) VALUES
    (805, 'account', 'sb-red', 'requests', 'day', 3);
SELECT rule_id, used FROM sb_levels('sb-ann') WHERE rule_id = 805;
BEGIN;
SELECT allowed FROM ai_check_limit('sb-ann', 'sb');
SELECT rule_id, used FROM sb_levels('sb-ann') WHERE rule_id = 805;
ROLLBACK;
SELECT allowed FROM ai_check_limit('sb-ann', 'sb');
SELECT allowed FROM ai_check_limit('sb-ann', 'sb');
SELECT allowed, limited_by, error FROM ai_check_limit('sb-ann', 'sb');

-- a peek counts nothing and holds nothing
SELECT allowed, limited_by FROM ai_peek_limit('sb-ben', 'sb');
SELECT layer, limit_value, used, held FROM ai_limit_state('sb-ben', 'sb') ORDER BY 1;

-- budget alerts of an account: each threshold of alert_percents, on each
-- cents rule of the account, once per window; a record that rolls back
-- takes its alert with it, and the next crossing fires it again
INSERT INTO ai_accounts (account_id, parent_id, alert_percents) VALUES ('al-org', NULL, '{50, 90, 100}');
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('al-team', 'al-org');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('al-team', 'al-ann', true);
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value) VALUES
    (806, 'account', 'al-org', 'cents', 'month', 10);
SELECT ai_record_usage('al-ann', 'sb-model', 2000, 2000);   -- 4 cents: 40%
BEGIN;
SELECT ai_record_usage('al-ann', 'sb-model', 1000, 1000);   -- 6 cents: 60%
SELECT account_id, threshold_percent, spend_cents FROM ai_account_alerts;
ROLLBACK;
SELECT count(*) AS none FROM ai_account_alerts;
SELECT ai_record_usage('al-ann', 'sb-model', 1000, 1000);   -- 6 cents: 60%, again
SELECT ai_record_usage('al-ann', 'sb-model', 1500, 1500);   -- 9 cents: 90%
SELECT ai_record_usage('al-ann', 'sb-model', 1000, 1000);   -- 11 cents: 110%
SELECT ai_record_usage('al-ann', 'sb-model', 1000, 1000);   -- 13 cents: nothing new
SELECT account_id, rule_id, threshold_percent, spend_cents, budget_cents, user_id,
       window_start = date_trunc('month', now(), 'UTC') AS this_month
FROM ai_account_alerts ORDER BY id;
-- bad thresholds are refused by the table
\set VERBOSITY terse
UPDATE ai_accounts SET alert_percents = '{0}' WHERE account_id = 'al-org';
UPDATE ai_accounts SET alert_percents = '{1,2,3,4,5,6,7,8,9}' WHERE account_id = 'al-org';
\set VERBOSITY default

-- a spent budget means one thing at every level (1.9): a cents rule over a
-- day, week or month refuses with retryable false, as the plan's monthly
-- budget does, and true while only estimates in flight stand in the way;
-- a rule over an hour stays retryable; refusals are counted by level
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('rt-org', NULL);
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('rt-org', 'rt-ann', true);
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value, member_id) VALUES
    (807, 'account', 'rt-org', '*', 'cents', 'month', 10, NULL),
    (808, 'account', 'rt-org', 'rt-hourly', 'cents', 'hour', 10, NULL),
    (809, 'member', 'rt-org', 'rt-daily', 'cents', 'day', 2, 'rt-ann');
SELECT ai_ratelimit_reset_stats();
SELECT ai_record_usage('rt-ann', 'sb-model', 4000, 4000);   -- 8 cents
SELECT reservation_id AS rid FROM ai_check_limit('rt-ann', 'pro', 1, model => 'sb-model') \gset
SELECT allowed, limited_by, retryable, retry_after > 0 AS waits
FROM ai_check_limit('rt-ann', 'pro', 1.5, model => 'sb-model');    -- 8 + 1 held + 1.5: held only
SELECT ai_release_reservation(:rid, 'rt-ann');
SELECT allowed, limited_by, retryable, retry_after > 0 AS until_next_month
FROM ai_check_limit('rt-ann', 'pro', 3, model => 'sb-model');      -- 8 + 3: spent
SELECT ai_record_usage('rt-ann', 'rt-daily', 750, 750);             -- 1.5 of the member's 2 a day
SELECT allowed, limited_by, retryable, retry_after > 0 AS until_midnight, error
FROM ai_check_limit('rt-ann', 'pro', 1, model => 'rt-daily');
DELETE FROM ai_rules WHERE rule_id = 807;
SELECT ai_record_usage('rt-ann', 'rt-hourly', 1000, 1000);   -- 2 cents of 10 this hour
SELECT allowed, limited_by, retryable FROM ai_check_limit('rt-ann', 'pro', 9, model => 'rt-hourly');
SELECT limited_by, requests FROM ai_ratelimit_stats WHERE plan = 'pro' AND limited_by IS NOT NULL
ORDER BY 1;
-- each account's spend against each of its caps
SELECT account_id, parent_id, rule_id, model_selector, metric, "window", max_value, used, held,
       remaining, used_percent, resets_at > now() AS resets
FROM ai_account_caps WHERE account_id IN ('rt-org', 'al-org') ORDER BY rule_id;
SELECT count(*) AS one_account FROM ai_account_limits('rt-org');

SELECT ai_ratelimit_verify();
DELETE FROM ai_rules WHERE rule_id BETWEEN 801 AND 809;
RESET ai_ratelimit.reservation_ttl;

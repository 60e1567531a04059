--
-- rules: limits as data (1.6).  A rule of ai_rules binds a plan's users or
-- one user, for all models, one model or a name prefix, in requests, tokens
-- or cents, over a sliding minute or a calendar hour, day, week or month.
--
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
VALUES ('claude-opus-4-1', 15, 75), ('claude-opus-4-5', 5, 25);
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('r-team', 1000, 1000);

-- bad rules are refused by the table itself
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('team', 'x', 'cents', 'day', 1);
INSERT INTO ai_rules (scope, scope_id, model, metric, "window", max_value) VALUES ('plan', 'r-team', 'claude-*-4', 'cents', 'day', 1);
INSERT INTO ai_rules (scope, scope_id, model, metric, "window", max_value) VALUES ('plan', 'r-team', '**', 'cents', 'day', 1);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('plan', 'r-team', 'dollars', 'day', 1);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('plan', 'r-team', 'cents', 'year', 1);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('plan', 'r-team', 'cents', 'day', -1);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('plan', 'r-team', 'requests', 'day', 1.5);
INSERT INTO ai_rules (scope, scope_id, metric, "window", max_value) VALUES ('plan', '', 'requests', 'day', 1);

-- a per-model budget: Opus models may spend 10 cents a day on r-team
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value, note)
VALUES (101, 'plan', 'r-team', 'claude-opus-*', 'cents', 'day', 10, 'opus budget');
-- 1,000 tokens in and 1,000 out on claude-opus-4-1 can cost 1.5 + 7.5 = 9 cents
SELECT allowed, reservation_id IS NOT NULL AS reserved, reservation_id AS r1_resv
FROM ai_check_limit('r-1', 'r-team', model => 'claude-opus-4-1',
                    input_tokens => 1000, max_output_tokens => 1000) \gset
SELECT :'allowed' AS allowed, :'reserved' AS reserved;
-- 9 held: another such call does not fit; the refusal names the rule
SELECT allowed, limited_by, error, limit_value, used, held, retryable
FROM ai_check_limit('r-1', 'r-team', model => 'claude-opus-4-1',
                    input_tokens => 1000, max_output_tokens => 1000);
-- a call of another model is not bound by it
SELECT allowed FROM ai_check_limit('r-1', 'r-team', model => 'claude-sonnet-4-6',
                                   input_tokens => 1000, max_output_tokens => 1000);
-- a check that names no model may be any model: the rule binds it too
SELECT allowed, limited_by FROM ai_check_limit('r-1', 'r-team', 2);
SELECT allowed, reservation_id IS NOT NULL AS reserved FROM ai_check_limit('r-1', 'r-team', 1);
-- the record settles the first reservation; what it cost is what counts
SELECT ai_record_usage('r-1', 'claude-opus-4-1', 1000, 200, 0, :r1_resv);
SELECT rule_id, scope, scope_id, model_selector, metric, "window", max_value, used, held, remaining,
       resets_at > now() AND resets_at <= now() + interval '1 day' AS resets_today
FROM ai_explain_limits('r-1', 'claude-opus-4-1', 'r-team') WHERE rule_id IS NOT NULL;
-- used 3 (1.5 + 1.5), held 1: 6 left; 7 is refused, 6 fits
SELECT allowed, limited_by, used, held FROM ai_check_limit('r-1', 'r-team', 7, model => 'claude-opus-4-5');
SELECT allowed FROM ai_check_limit('r-1', 'r-team', 6, model => 'claude-opus-4-5');
-- with the budget reached, a check without an estimate is refused as well
SELECT allowed, limited_by FROM ai_check_limit('r-1', 'r-team', model => 'claude-opus-4-5');
-- releasing an estimate gives it back at once
SELECT ai_release_reservation(reservation_id) FROM ai_check_limit('r-2', 'r-team', 4, model => 'claude-opus-4-5');
SELECT used, held FROM ai_explain_limits('r-2', 'claude-opus-4-5', 'r-team') WHERE rule_id = 101;
-- a rolled back check holds nothing
BEGIN;
SELECT allowed FROM ai_check_limit('r-2', 'r-team', 10, model => 'claude-opus-4-5');
SELECT held FROM ai_explain_limits('r-2', 'claude-opus-4-5', 'r-team') WHERE rule_id = 101;
ROLLBACK;
SELECT held FROM ai_explain_limits('r-2', 'claude-opus-4-5', 'r-team') WHERE rule_id = 101;
-- a rolled back record counts nothing; a committed one counts
BEGIN;
SELECT ai_record_usage('r-2', 'claude-opus-4-1', 2000, 0);
SELECT used FROM ai_explain_limits('r-2', 'claude-opus-4-1', 'r-team') WHERE rule_id = 101;
ROLLBACK;
SELECT used FROM ai_explain_limits('r-2', 'claude-opus-4-1', 'r-team') WHERE rule_id = 101;
SELECT ai_record_usage('r-2', 'claude-opus-4-1', 2000, 0);
SELECT used FROM ai_explain_limits('r-2', 'claude-opus-4-1', 'r-team') WHERE rule_id = 101;
-- a check in the recording transaction counts the record
BEGIN;
SELECT ai_record_usage('r-2', 'claude-opus-4-5', 1000000, 0);
SELECT allowed, limited_by, used FROM ai_check_limit('r-2', 'r-team', 1, model => 'claude-opus-4-5');
ROLLBACK;
SELECT allowed FROM ai_check_limit('r-2', 'r-team', 1, model => 'claude-opus-4-5');

-- rows written without ai_record_usage count too (INSERT, COPY, restore)
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
VALUES (now(), (now() AT TIME ZONE current_setting('ai_ratelimit.timezone'))::date, 'r-2',
        'claude-opus-4-1', 'claude-opus-4-1', 0, 0, 0, 5);
SELECT used FROM ai_explain_limits('r-2', 'claude-opus-4-1', 'r-team') WHERE rule_id = 101;
SELECT allowed, limited_by FROM ai_check_limit('r-2', 'r-team', 1, model => 'claude-opus-4-1');

-- a rule added mid-window starts from what is recorded, never from zero
SELECT ai_record_usage('r-3', 'gpt-4o', 100000, 0);   -- 25 cents
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
VALUES (102, 'user', 'r-3', 'gpt-4o', 'cents', 'month', 30);
SELECT allowed, limited_by, error, used FROM ai_check_limit('r-3', 'r-team', 6, model => 'gpt-4o');
SELECT allowed FROM ai_check_limit('r-3', 'r-team', 5, model => 'gpt-4o');
-- a new maximum applies to the next check; the use stays
UPDATE ai_rules SET max_value = 40 WHERE rule_id = 102;
SELECT allowed FROM ai_check_limit('r-3', 'r-team', 10, model => 'gpt-4o');
SELECT used, held, remaining FROM ai_explain_limits('r-3', 'gpt-4o', 'r-team') WHERE rule_id = 102;

-- a model rule added while a request is in flight: the reservation, made
-- by a check that could not name the rule, holds on it until it settles
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
VALUES (109, 'user', 'r-8', '*', 'cents', 'month', 1000);
SELECT reservation_id AS r8_resv FROM ai_check_limit('r-8', 'r-team', 8, model => 'gpt-4o-mini') \gset
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
VALUES (110, 'user', 'r-8', 'gpt-4o*', 'cents', 'day', 10);
SELECT allowed, limited_by, error, used, held FROM ai_check_limit('r-8', 'r-team', 5, model => 'gpt-4o-mini');
SELECT used, held FROM ai_explain_limits('r-8', 'gpt-4o-mini', 'r-team') WHERE rule_id = 110;
-- a check made now names the rule, and holds on it alone among model rules
SELECT allowed FROM ai_check_limit('r-8', 'r-team', 1, model => 'gpt-4o-mini');
SELECT ai_release_reservation(:r8_resv);
SELECT allowed FROM ai_check_limit('r-8', 'r-team', 5, model => 'gpt-4o-mini');
SELECT used, held FROM ai_explain_limits('r-8', 'gpt-4o-mini', 'r-team') WHERE rule_id = 110;
-- a rule changed to take in a model in flight: the same
SELECT reservation_id AS r8_resv2 FROM ai_check_limit('r-8', 'r-team', 3, model => 'o3') \gset
UPDATE ai_rules SET model = 'o*' WHERE rule_id = 110;
SELECT used, held FROM ai_explain_limits('r-8', 'o3', 'r-team') WHERE rule_id = 110;
SELECT allowed, limited_by FROM ai_check_limit('r-8', 'r-team', 2, model => 'o3');
SELECT ai_release_reservation(:r8_resv2);
DELETE FROM ai_rules WHERE rule_id IN (109, 110);

-- requests per minute of one model, and per hour of every model, for one user
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (103, 'plan', 'r-team', 'gpt-4o', 'requests', 'minute', 2),
    (104, 'user', 'r-4', '*', 'requests', 'hour', 3);
SELECT allowed FROM ai_check_limit('r-4', 'r-team', model => 'gpt-4o');
BEGIN;
SELECT allowed FROM ai_check_limit('r-4', 'r-team', model => 'gpt-4o');
ROLLBACK;
SELECT allowed FROM ai_check_limit('r-4', 'r-team', model => 'gpt-4o');
-- the oldest of the two leaves the sliding minute within a bucket (3 s) of a minute
SELECT allowed, limited_by, error, limit_value, used, retryable, retry_after BETWEEN 57 AND 63 AS about_a_minute
FROM ai_check_limit('r-4', 'r-team', model => 'gpt-4o');
SELECT allowed FROM ai_check_limit('r-4', 'r-team', model => 'claude-sonnet-4-6');
SELECT allowed, limited_by, error FROM ai_check_limit('r-4', 'r-team', model => 'claude-sonnet-4-6');
SELECT rule_id, metric, "window", used, remaining FROM ai_explain_limits('r-4', 'gpt-4o', 'r-team')
WHERE rule_id IS NOT NULL ORDER BY rule_id;
-- an operator's reset frees the counts, never what is held
SELECT ai_reset_limits('r-4');
SELECT allowed FROM ai_check_limit('r-4', 'r-team', model => 'gpt-4o');
-- ... nor what was spent: cents recorded in a rule's minute stay counted
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
VALUES (107, 'user', 'r-7', '*', 'cents', 'minute', 10);
SELECT allowed FROM ai_check_limit('r-7', 'r-team', 1, model => 'gpt-4o');
SELECT ai_record_usage('r-7', 'gpt-4o', 0, 8000);   -- 8 cents
SELECT ai_reset_limits('r-7');
SELECT allowed, limited_by, used FROM ai_check_limit('r-7', 'r-team', 3, model => 'gpt-4o');
DELETE FROM ai_rules WHERE rule_id = 107;

-- tokens per day: the estimate is held until the record
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
VALUES (105, 'user', 'r-5', '*', 'tokens', 'day', 5000);
SELECT allowed, reservation_id IS NOT NULL AS reserved, reservation_id AS r5_resv
FROM ai_check_limit('r-5', 'r-team', estimated_tokens => 3000) \gset
SELECT :'allowed' AS allowed, :'reserved' AS reserved;
SELECT allowed, limited_by, used, held FROM ai_check_limit('r-5', 'r-team', estimated_tokens => 3000);
SELECT ai_record_usage('r-5', 'gpt-4o', 1000, 1500, 0, :r5_resv);
SELECT used, held FROM ai_explain_limits('r-5', plan => 'r-team') WHERE rule_id = 105;
SELECT allowed FROM ai_check_limit('r-5', 'r-team', estimated_tokens => 2500);
SELECT allowed, limited_by FROM ai_check_limit('r-5', 'r-team', estimated_tokens => 1);

-- a maximum of 0 shuts the models off, and no retry can help
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
VALUES (106, 'plan', 'r-team', 'claude-opus-4-1', 'requests', 'week', 0);
SELECT allowed, limited_by, retry_after, retryable
FROM ai_check_limit('r-6', 'r-team', model => 'claude-opus-4-1');
-- ai_explain_limits lists the plan's own limits first, then every rule
SELECT rule_id, scope, model_selector, metric, "window", max_value
FROM ai_explain_limits('r-6', 'claude-opus-4-1', 'r-team');
-- dropping a rule frees at once
DELETE FROM ai_rules WHERE rule_id = 106;
SELECT allowed FROM ai_check_limit('r-6', 'r-team', model => 'claude-opus-4-1');

-- refusals by rules are counted as such
SELECT plan, limited_by, requests FROM ai_ratelimit_stats WHERE plan = 'r-team'
ORDER BY limited_by NULLS FIRST;
-- the rules' counters are not users
SELECT count(*) FROM ai_ratelimit_status WHERE user_id LIKE 'r-%';

-- rate-limit headers: ai_limit_state lists the rules too, as layers "rule:<id>"
-- (a day of UTC is 86,400 seconds; a month is 28 to 31 days)
SELECT layer, limit_value, used, held, remaining,
       CASE layer WHEN 'rule:102' THEN (window_seconds BETWEEN 28 * 86400 AND 31 * 86400)::text
                  ELSE window_seconds::text END AS window_seconds,
       reset_at > now() AS resets
FROM ai_limit_state('r-3', 'r-team') WHERE layer LIKE 'rule:%' ORDER BY layer;
-- bad input to ai_explain_limits
SELECT * FROM ai_explain_limits(NULL);
SELECT * FROM ai_explain_limits('r-1', '');
SELECT * FROM ai_explain_limits('r-1', NULL, 'no-such-plan');

DELETE FROM ai_rules;

-- a rule reaches this session's next statement, and leaves again when its
-- savepoint rolls back
BEGIN;
SAVEPOINT s;
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
VALUES (107, 'plan', 'r-team', 'requests', 'day', 0);
SELECT allowed, limited_by FROM ai_check_limit('r-7', 'r-team');
ROLLBACK TO SAVEPOINT s;
SELECT allowed, limited_by FROM ai_check_limit('r-7', 'r-team');
COMMIT;

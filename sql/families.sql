--
-- model families (1.9): a provider's dated name with no price row of its
-- own is priced and counted as its family, the name without its date
--
SELECT m AS model, ai_model_family(m) AS family FROM (VALUES
    ('gpt-4o-2024-08-06'), ('claude-sonnet-4-5-20250929'), ('claude-3-5-sonnet@20240620'),
    ('gpt-4o'), ('gpt-4o-mini-2024-07-18'), ('x-2024-08-06-2024-08-07'),
    -- four digits name versions as often as dates: not a date here
    ('gpt-4-0613'), ('mistral-large-2407'),
    -- not a date: no month 13, no day 32, a year of 20xx, two digits each
    ('gpt-4o-2024-13-01'), ('gpt-4o-20240832'), ('m-19991231'), ('m-2024-8-06'),
    ('m_20240806'), ('-20240806'), ('2024-08-06')) v(m);
SELECT ai_model_family(NULL) IS NULL AS strict;

-- priced by the family's row, without a WARNING: 1M tokens in at $2.50
INSERT INTO ai_plans (plan) VALUES ('f-plan');
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
VALUES ('gpt-4o-mini', 0.15, 0.60);
SELECT ai_record_usage('f-1', 'gpt-4o-2024-08-06', 1000000, 0);
-- a dated name with a row of its own is priced by it
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
VALUES ('gpt-4o-2024-05-13', 5, 15);
SELECT ai_record_usage('f-1', 'gpt-4o-2024-05-13', 1000000, 0);
-- a dated name of a family without a price: '*', with its WARNING
SELECT ai_record_usage('f-1', 'no-such-model-2024-08-06', 1000000, 0);
SELECT model, priced_as, cost_cents FROM ai_usage WHERE user_id = 'f-1' ORDER BY cost_cents;
SELECT ai_estimate_cost('claude-sonnet-4-6-20260101', 1000, 2000);
SET ai_ratelimit.unknown_model = 'refuse';
SELECT ai_estimate_cost('gpt-4o-2024-11-20', 1000, 2000);
SELECT ai_estimate_cost('gpt-4o-2024-11-20-preview', 1000, 2000);
SELECT ai_estimate_cost('no-such-model-20240806', 1000, 2000);
RESET ai_ratelimit.unknown_model;

-- a rule that names the family counts its dated names, at the check and at
-- the record; a prefix rule counts them as before
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (901, 'user', 'f-2', 'gpt-4o', 'cents', 'month', 10),
    (902, 'user', 'f-2', 'gpt-4o-mini', 'cents', 'month', 1000),
    (903, 'user', 'f-2', 'gpt-4o*', 'cents', 'month', 1000),
    (904, 'user', 'f-2', 'gpt-4o-2024-08-06', 'requests', 'month', 100);
SELECT allowed, reservation_id IS NOT NULL AS held
FROM ai_check_limit('f-2', 'f-plan', 6, model => 'gpt-4o-2024-08-06');
-- 6 held on gpt-4o: a check of either name for 6 more is refused
SELECT allowed, limited_by, error FROM ai_check_limit('f-2', 'f-plan', 6, model => 'gpt-4o');
SELECT allowed, limited_by FROM ai_check_limit('f-2', 'f-plan', 6, model => 'gpt-4o-20241120');
-- gpt-4o-mini is a family of its own
SELECT allowed FROM ai_check_limit('f-2', 'f-plan', 6, model => 'gpt-4o-mini-2024-07-18');
SELECT rule_id, model_selector, used, held, model_family, priced_as
FROM ai_explain_limits('f-2', 'gpt-4o-2024-08-06', 'f-plan') WHERE rule_id IS NOT NULL ORDER BY rule_id;
SELECT rule_id, model_selector, used, held, model_family, priced_as
FROM ai_explain_limits('f-2', 'gpt-4o-mini-2024-07-18', 'f-plan') WHERE rule_id IS NOT NULL ORDER BY rule_id;

-- a check of the family recorded under its dated name (what a provider
-- answers) settles on the family's rules: 2,000 tokens in is 0.5 cents
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (911, 'user', 'f-3', 'gpt-4o', 'cents', 'month', 10);
SELECT reservation_id AS rid
FROM ai_check_limit('f-3', 'f-plan', 3, model => 'gpt-4o') \gset
SELECT used, held FROM ai_explain_limits('f-3', 'gpt-4o', 'f-plan') WHERE rule_id = 911;
SELECT ai_record_usage('f-3', 'gpt-4o-2024-08-06', 2000, 0, 0, :rid);
SELECT ai_record_usage('f-3', 'gpt-4o-mini-2024-07-18', 2000, 0);
SELECT ai_record_usage('f-3', 'gpt-4o-2024-08-06', 2000, 0);
SELECT used, held FROM ai_explain_limits('f-3', 'gpt-4o', 'f-plan') WHERE rule_id = 911;
-- the tables say the same: a rule added now sums its window from ai_usage
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (912, 'user', 'f-3', 'gpt-4o', 'cents', 'day', 10),
    (913, 'user', 'f-3', 'gpt-4o', 'tokens', 'week', 100000),
    (914, 'user', 'f-3', 'gpt-4o-mini', 'cents', 'hour', 10);
SELECT rule_id, used FROM ai_explain_limits('f-3', NULL, 'f-plan')
WHERE rule_id BETWEEN 911 AND 914 ORDER BY rule_id;
-- rows written another way, as the day's totals once ai_compact_usage has
-- made them (from an hour after midnight): the same sums from either
SELECT (now() AT TIME ZONE current_setting('ai_ratelimit.timezone'))::date AS today \gset
INSERT INTO ai_usage (created_at, day, user_id, model, priced_as, input_tokens, output_tokens,
                      cached_input_tokens, cost_cents)
SELECT :'today'::timestamp AT TIME ZONE current_setting('ai_ratelimit.timezone'), :'today',
       'f-5', m, m, 100, 10, 0, c
FROM (VALUES ('gpt-4o-2024-08-06', 1.25), ('gpt-4o', 2.5), ('gpt-4o-20240806', 5),
             ('gpt-4o-mini-2024-07-18', 10), ('gpt-4o-2024-08-06-x', 20)) v(m, c);
SELECT ai_compact_usage() >= 0 AS compacted;
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (931, 'user', 'f-5', 'gpt-4o', 'cents', 'day', 100),
    (932, 'user', 'f-5', 'gpt-4o-mini', 'cents', 'day', 100),
    (933, 'user', 'f-5', 'gpt-4o-2024-08-06', 'cents', 'day', 100);
SELECT rule_id, used, used = (SELECT sum(cost_cents) FROM ai_usage
                              WHERE user_id = 'f-5' AND (ai_model_family(model) = model_selector
                                                         OR model = model_selector)) AS as_family
FROM ai_explain_limits('f-5', NULL, 'f-plan') WHERE rule_id > 930 ORDER BY rule_id;
-- and so do account rules, summed over the account's rows
INSERT INTO ai_accounts (account_id) VALUES ('f-team');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES ('f-team', 'f-4', true);
SELECT ai_record_usage('f-4', 'gpt-4o-2024-08-06', 4000, 0);
SELECT ai_record_usage('f-4', 'gpt-4o', 4000, 0);
SELECT ai_record_usage('f-4', 'gpt-4o-mini', 4000, 0);
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (921, 'account', 'f-team', 'gpt-4o', 'cents', 'month', 100),
    (922, 'account', 'f-team', 'gpt-4o', 'cents', 'hour', 100);
SELECT rule_id, used, model_family FROM ai_explain_limits('f-4', 'gpt-4o-2024-08-06', 'f-plan')
WHERE rule_id IN (921, 922) ORDER BY rule_id;
SELECT ai_record_usage('f-4', 'gpt-4o-2024-08-06', 4000, 0);
SELECT rule_id, used FROM ai_explain_limits('f-4', 'gpt-4o', 'f-plan')
WHERE rule_id IN (921, 922) ORDER BY rule_id;

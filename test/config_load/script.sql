-- One step of one client of the configuration-edit mix: mostly a check, a
-- wait and a record (separate transactions), the rest an edit of the
-- configuration or a read of the limits.
\set u random(1, 40)
\set m random(1, 200)
\set e random(1, 30)
\if :e = 1
UPDATE ai_rules SET max_value = max_value + 1 WHERE rule_id IN (:m, 201 + :u % 4, 205);
\elif :e = 2
UPDATE ai_accounts SET alert_percents = ARRAY[50 + :m % 40] WHERE account_id = 'ce-t' || (1 + :u % 4);
\elif :e = 3
UPDATE ai_account_members SET account_id = 'ce-t' || (1 + :m % 4) WHERE user_id = 'ce-' || :u;
\elif :e = 4
UPDATE ai_plans SET daily_limit = daily_limit + 1 WHERE plan = 'ce';
\elif :e = 5
UPDATE ai_model_prices SET input_usd_per_mtok = 0.1 + (:m % 3) * 0.01 WHERE model = 'ce-m' || :m;
\elif :e = 6
BEGIN;
-- one client at a time replaces a rule: two deleting the same row at once
-- would both insert it again
SELECT pg_advisory_xact_lock(:m);
DELETE FROM ai_rules WHERE rule_id = :m;
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
    VALUES (:m, 'plan', 'ce', 'ce-m' || :m, 'cents', 'day', 100000);
COMMIT;
\elif :e = 7
SELECT count(*) FROM ai_limit_state('ce-' || :u, 'ce');
\elif :e = 8
SELECT count(*) FROM ai_explain_limits('ce-' || :u, model => 'ce-m' || :m, plan => 'ce');
\else
SELECT coalesce(reservation_id, 0) AS rid FROM ai_check_limit('ce-' || :u, 'ce',
    model => 'ce-m' || :m, input_tokens => 100, max_output_tokens => 100) \gset
\sleep 2 ms
SELECT ce_record(:u, :m, :rid);
\endif

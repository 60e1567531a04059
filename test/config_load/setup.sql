-- The configuration-edit mix (t/023_config_under_load.pl, scripts/memcheck.sh):
-- 40 members of 4 teams of one organisation, a cents rule on each team and
-- on the organisation, 200 rules of the plan by model.
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
    SELECT 'ce-m' || i, 0.1, 0.2 FROM generate_series(1, 200) i;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents)
    VALUES ('ce', NULL, 1000000, 100000);
INSERT INTO ai_accounts (account_id, parent_id, alert_percents) VALUES ('ce-org', NULL, '{50,90}');
INSERT INTO ai_accounts (account_id, parent_id, alert_percents)
    SELECT 'ce-t' || t, 'ce-org', '{80}' FROM generate_series(1, 4) t;
INSERT INTO ai_account_members (account_id, user_id, is_default)
    SELECT 'ce-t' || (1 + (u - 1) / 10), 'ce-' || u, true FROM generate_series(1, 40) u;
-- rules 1-200: the plan's, one per model; 201-204: each team's; 205: the organisation's
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value)
    SELECT m, 'plan', 'ce', 'ce-m' || m, 'cents', 'day', 100000 FROM generate_series(1, 200) m;
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
    SELECT 200 + t, 'account', 'ce-t' || t, 'cents', 'month', 100000 FROM generate_series(1, 4) t;
INSERT INTO ai_rules (rule_id, scope, scope_id, metric, "window", max_value)
    VALUES (205, 'account', 'ce-org', 'cents', 'month', 100000);
-- a record only of what was allowed, with its reservation
CREATE FUNCTION ce_record(u int, m int, rid bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF rid > 0 THEN
        PERFORM ai_record_usage('ce-' || u, 'ce-m' || m, 100, 50, 0, rid);
    END IF;
END $$;

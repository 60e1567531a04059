# Shared budgets under load: 16 clients check with a model's priced
# estimate and then record (less than the estimate), release, abandon,
# record in a subtransaction that rolls back, or roll the whole transaction
# back, for 4 users in 2 teams of one organisation.  Each level has its own
# cent cap: the organisation and each team a month, one member inside its
# team a day, and every user (the plan) a day.  Every decision is logged in
# the caller's transaction.  Afterwards, from the tables alone: no user,
# member, team or organisation is over its cap by a cent; every refusal was
# justified by its own numbers (used + held + estimate over the limit of
# the level it names); the caps were reached; and once every estimate has
# settled or expired, a check is allowed exactly when every level has room.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('shared_load');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->append_conf('postgresql.conf', "max_connections = 40");
# abandoned estimates expire during the load; no check-then-record step
# outlives one on a loaded machine
my $ttl = 10;
$node->append_conf('postgresql.conf', "ai_ratelimit.reservation_ttl = $ttl");
$node->start;

# the caps: low enough that the load reaches every level
my ($org, $team, $member, $user_day) = (100, 60, 15, 45);

$node->safe_psql('postgres', qq{
CREATE EXTENSION ai_ratelimit;
-- cheap calls, so that thousands are allowed under the caps: 1,000 tokens
-- in cost 0.01 cent; out 0.01 or 0.04 cent per 1,000
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES
    ('sl-small', 0.1, 0.1), ('sl-large', 0.1, 0.4);
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('sl', NULL, NULL);
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('S-org', NULL), ('S-t1', 'S-org'), ('S-t2', 'S-org');
INSERT INTO ai_account_members (account_id, user_id, is_default) VALUES
    ('S-t1', 'S-1', true), ('S-t1', 'S-2', true), ('S-t2', 'S-3', true), ('S-t2', 'S-4', true);
INSERT INTO ai_rules (rule_id, scope, scope_id, member_id, metric, "window", max_value) VALUES
    (1, 'account', 'S-org', NULL, 'cents', 'month', $org),
    (2, 'account', 'S-t1', NULL, 'cents', 'month', $team),
    (3, 'account', 'S-t2', NULL, 'cents', 'month', $team),
    (4, 'member', 'S-t1', 'S-1', 'cents', 'day', $member),
    (5, 'plan', 'sl', NULL, 'cents', 'day', $user_day);
-- every decision, in the caller's transaction: a rolled-back check leaves none
CREATE TABLE sl_log (user_id text, allowed boolean, limited_by text, est numeric,
                     limit_value numeric, used numeric, held numeric);
CREATE FUNCTION sl_step(u int, m int, out_tokens int, act int) RETURNS void
LANGUAGE plpgsql AS \$\$
DECLARE
    uid text := 'S-' || u;
    model text := (ARRAY['sl-small', 'sl-large'])[m];
    est numeric := ai_estimate_cost(model, 1000, 2000);
    c record;
BEGIN
    SELECT * INTO c FROM ai_check_limit(uid, 'sl', model => model,
                                        input_tokens => 1000, max_output_tokens => 2000);
    INSERT INTO sl_log VALUES (uid, c.allowed, c.limited_by, est, c.limit_value, c.used, c.held);
    IF NOT c.allowed THEN
        RETURN;
    END IF;
    IF act = 9 THEN
        PERFORM ai_release_reservation(c.reservation_id);      -- the call failed
    ELSIF act = 8 THEN
        NULL;                                                  -- abandoned: held until it expires
    ELSIF act = 7 THEN
        BEGIN                                                  -- recorded, then undone
            PERFORM ai_record_usage(uid, model, 1000, out_tokens, 0, c.reservation_id);
            RAISE EXCEPTION 'sl: undo the record';
        EXCEPTION WHEN raise_exception THEN
            NULL;
        END;
    ELSE
        PERFORM ai_record_usage(uid, model, 1000, out_tokens, 0, c.reservation_id);
    END IF;
END \$\$;
-- one check, given back at once (a subtransaction)
CREATE FUNCTION sl_try(u text, cents numeric) RETURNS boolean
LANGUAGE plpgsql AS \$\$
DECLARE
    ok boolean;
BEGIN
    BEGIN
        SELECT allowed INTO ok FROM ai_check_limit(u, 'sl', cents);
        RAISE EXCEPTION 'sl: give it back';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    RETURN ok;
END \$\$;
-- does the log leave room for such a check at every level that binds it?
CREATE FUNCTION sl_room(u text, cents numeric) RETURNS boolean
LANGUAGE sql AS \$\$
    WITH t AS (SELECT timezone(current_setting('ai_ratelimit.timezone'), now())::date AS today),
    m AS (SELECT a.account_id FROM ai_account_members a WHERE a.user_id = u AND a.is_default)
    SELECT
        (SELECT coalesce(sum(cost_cents), 0) FROM ai_usage, t
          WHERE date_trunc('month', day) = date_trunc('month', t.today)) + cents <= $org
    AND (SELECT coalesce(sum(cost_cents), 0) FROM ai_usage, t, m
          WHERE ai_usage.account_id = m.account_id
            AND date_trunc('month', day) = date_trunc('month', t.today)) + cents <= $team
    AND (u <> 'S-1' OR (SELECT coalesce(sum(cost_cents), 0) FROM ai_usage, t
          WHERE user_id = u AND account_id = 'S-t1' AND day = t.today) + cents <= $member)
    AND (SELECT coalesce(sum(cost_cents), 0) FROM ai_usage, t
          WHERE user_id = u AND day = t.today) + cents <= $user_day
\$\$;
});

# act 10: the whole transaction rolls back, check and record with it
$node->pgbench('-n -c 16 -j 4 -T ' . (2 * $ttl), 0, [qr/actually processed: \d+/], [qr/^$/],
	'16 clients in 2 teams check and record against every level',
	{
		'shared_load' => q{
\set u random(1, 4)
\set m random(1, 2)
\set out random(0, 2000)
\set act random(1, 10)
BEGIN;
SELECT sl_step(:u, :m, :out, :act);
\if :act = 10
ROLLBACK;
\else
COMMIT;
\endif
}
	});

# what each level spent, from the log alone
my %over = (
	"organisation ($org cents a month)" => qq{
		SELECT date_trunc('month', day), sum(cost_cents) FROM ai_usage
		GROUP BY 1 HAVING sum(cost_cents) > $org},
	"team ($team cents a month)" => qq{
		SELECT account_id, date_trunc('month', day), sum(cost_cents) FROM ai_usage
		GROUP BY 1, 2 HAVING sum(cost_cents) > $team},
	"member S-1 in S-t1 ($member cents a day)" => qq{
		SELECT day, sum(cost_cents) FROM ai_usage WHERE user_id = 'S-1' AND account_id = 'S-t1'
		GROUP BY 1 HAVING sum(cost_cents) > $member},
	"user ($user_day cents a day)" => qq{
		SELECT user_id, day, sum(cost_cents) FROM ai_usage
		GROUP BY 1, 2 HAVING sum(cost_cents) > $user_day},
);
for my $level (sort keys %over)
{
	is($node->safe_psql('postgres', $over{$level}), '', "no $level over its cap");
}
is($node->safe_psql('postgres',
		"SELECT count(*) FROM ai_usage WHERE account_id IS DISTINCT FROM CASE WHEN user_id IN ('S-1', 'S-2') THEN 'S-t1' ELSE 'S-t2' END"),
	'0', 'every call is filed under its user\'s team');

# every level refused, and each refusal was justified by its own numbers
my $refusals = $node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT limited_by, ',' ORDER BY limited_by) FROM sl_log WHERE NOT allowed});
like($refusals, qr/^account,member(,rule)?$/, 'refused by accounts and by the member rule (and perhaps by the plan\'s rule)');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM sl_log
	WHERE NOT allowed AND (limit_value IS NULL OR used + held + est <= limit_value)}),
	'0', 'no request was refused while the level it names had room, counting requests in flight');
note($node->safe_psql('postgres', q{
	SELECT format('%s checks, %s allowed; org %s cents; teams %s',
	              count(*), count(*) FILTER (WHERE allowed),
	              (SELECT sum(cost_cents) FROM ai_usage),
	              (SELECT string_agg(format('%s %s', account_id, s), ', ' ORDER BY account_id)
	                 FROM (SELECT account_id, sum(cost_cents) s FROM ai_usage GROUP BY 1) x))
	FROM sl_log}));
cmp_ok($node->safe_psql('postgres', "SELECT sum(cost_cents) FROM ai_usage"),
	'>=', $org - 30, 'the organisation\'s budget was nearly spent');

# Every estimate settled, released, rolled back or expired: a check is
# allowed exactly when every level has room for it.
sleep($ttl + 1);
my $answers = $node->safe_psql('postgres', q{
	SELECT format('%s %s %s %s', u, e.cents, sl_room(u, e.cents), sl_try(u, e.cents))
	FROM (VALUES ('S-1'), ('S-2'), ('S-3'), ('S-4')) us(u),
	     (VALUES (0.5), (2), (5), (12), (30)) e(cents)
	ORDER BY 1});
my @rows = split /\n/, $answers;
is(scalar(@rows), 20, 'every user and estimate asked');
my @wrong = grep { my @f = split / /; $f[2] ne $f[3] } @rows;
is(join(', ', @wrong), '', 'allowed exactly when every level has room (user, estimate, room, allowed)');
my $fit = grep { (split / /)[2] eq 't' } @rows;
note("after the load, $fit of 20 checks fit");
cmp_ok($fit, '<', 20, 'some checks no longer fit');

# the counters agree with the tables, and hold nothing once it all ended
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared counters are consistent');
is($node->safe_psql('postgres', 'SELECT coalesce(sum(reserved_cents), 0) FROM ai_account_status'),
	'0', 'no account holds anything once every estimate has ended');

done_testing();

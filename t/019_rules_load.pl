# Rules under load: 16 clients check with a model's priced estimate and then
# record (less than the estimate), release, abandon, record in a
# subtransaction that rolls back, or roll the whole transaction back, for 4
# users and 3 models against per-model and all-model budgets in cents, a
# token budget and requests per hour.  Afterwards, from the usage log alone:
# no rule of any user is over its maximum by a cent, a token or a request;
# the caps were reached (the load was not too light to tell); and once every
# estimate has settled or expired, a check is allowed exactly when the log
# says every rule has room for it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('rules_load');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'ai_ratelimit'");
$node->append_conf('postgresql.conf', "max_connections = 40");
# Abandoned estimates expire during the load.  The time to live is long
# enough that no check-then-record step outlives it even on a loaded machine
# (2 seconds, and once 5 on a machine running two suites at once, were not: a
# step's record came after its estimate expired).
my $ttl = 10;
$node->append_conf('postgresql.conf', "ai_ratelimit.reservation_ttl = $ttl");
$node->start;

# the rules' maximums: low enough that the load reaches them
my ($opus_day, $month, $l1_gpta_day, $gpt_tokens_day, $opus_hour) = (40, 70, 8, 15000, 60);

$node->safe_psql('postgres', qq{
CREATE EXTENSION ai_ratelimit;
-- whole cents: 1,000 tokens in cost 1 cent on every model here
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES
    ('lt-opus-1', 10, 50), ('lt-gpt-a', 10, 20), ('lt-gpt-b', 10, 10);
INSERT INTO ai_plans (plan, burst_limit, daily_limit) VALUES ('lt', NULL, NULL);
INSERT INTO ai_rules (rule_id, scope, scope_id, model, metric, "window", max_value) VALUES
    (1, 'plan', 'lt',  'lt-opus-*', 'cents',    'day',   $opus_day),
    (2, 'plan', 'lt',  '*',         'cents',    'month', $month),
    (3, 'user', 'L-1', 'lt-gpt-a',  'cents',    'day',   $l1_gpta_day),
    (4, 'plan', 'lt',  'lt-gpt-*',  'tokens',   'day',   $gpt_tokens_day),
    (5, 'plan', 'lt',  'lt-opus-*', 'requests', 'hour',  $opus_hour);
-- every answer, in the caller's transaction: a rolled-back check leaves none
CREATE TABLE lt_log (user_id text, model text, allowed boolean, limited_by text,
                     at timestamptz DEFAULT clock_timestamp());
CREATE FUNCTION lt_step(u int, m int, out_tokens int, act int) RETURNS void
LANGUAGE plpgsql AS \$\$
DECLARE
    uid text := 'L-' || u;
    model text := (ARRAY['lt-opus-1', 'lt-gpt-a', 'lt-gpt-b'])[m];
    c record;
BEGIN
    SELECT * INTO c FROM ai_check_limit(uid, 'lt', model => model,
                                        input_tokens => 1000, max_output_tokens => 2000);
    INSERT INTO lt_log (user_id, model, allowed, limited_by) VALUES (uid, model, c.allowed, c.limited_by);
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
            RAISE EXCEPTION 'lt: undo the record';
        EXCEPTION WHEN raise_exception THEN
            NULL;
        END;
    ELSE
        PERFORM ai_record_usage(uid, model, 1000, out_tokens, 0, c.reservation_id);
    END IF;
END \$\$;
-- one check, given back at once (a subtransaction)
CREATE FUNCTION lt_try(u text, m text, cents numeric, tokens bigint) RETURNS boolean
LANGUAGE plpgsql AS \$\$
DECLARE
    ok boolean;
BEGIN
    BEGIN
        SELECT allowed INTO ok FROM ai_check_limit(u, 'lt', cents, tokens, model => m);
        RAISE EXCEPTION 'lt: give it back';
    EXCEPTION WHEN raise_exception THEN
        NULL;
    END;
    RETURN ok;
END \$\$;
-- does the log leave room for such a check under every rule that binds it?
CREATE FUNCTION lt_room(u text, m text, cents numeric, tokens bigint) RETURNS boolean
LANGUAGE sql AS \$\$
    WITH today AS (SELECT timezone(current_setting('ai_ratelimit.timezone'), now()) AS t),
    used AS (
        SELECT coalesce(sum(cost_cents) FILTER (WHERE date_trunc('month', a.day) = date_trunc('month', t.t)), 0) AS month,
               coalesce(sum(cost_cents) FILTER (WHERE a.day = t.t::date AND a.model LIKE 'lt-opus-%'), 0) AS opus_day,
               coalesce(sum(cost_cents) FILTER (WHERE a.day = t.t::date AND a.model = 'lt-gpt-a'), 0) AS gpta_day,
               coalesce(sum(input_tokens + output_tokens + cached_input_tokens)
                        FILTER (WHERE a.day = t.t::date AND a.model LIKE 'lt-gpt-%'), 0) AS gpt_tokens
        FROM today t LEFT JOIN ai_usage a ON a.user_id = u
        GROUP BY t.t),
    hour AS (
        SELECT count(*) AS opus FROM lt_log l, today t
        WHERE l.user_id = u AND l.allowed AND l.model = 'lt-opus-1'
          AND date_trunc('hour', timezone(current_setting('ai_ratelimit.timezone'), l.at)) = date_trunc('hour', t.t))
    SELECT used.month + cents <= $month
       AND (m NOT LIKE 'lt-opus-%' OR (used.opus_day + cents <= $opus_day AND hour.opus + 1 <= $opus_hour))
       AND (m <> 'lt-gpt-a' OR u <> 'L-1' OR used.gpta_day + cents <= $l1_gpta_day)
       AND (m NOT LIKE 'lt-gpt-%' OR used.gpt_tokens + tokens <= $gpt_tokens_day)
    FROM used, hour
\$\$;
});

# act 10: the whole transaction rolls back, check and record with it, and
# a second record without a reservation id, of a user of its own (a record
# without an id settles only a reservation of its own transaction, never
# another client's in flight)
$node->pgbench('-n -c 16 -j 4 -T ' . (2 * $ttl), 0, [qr/actually processed: \d+/], [qr/^$/],
	'16 clients check and record against the rules',
	{
		'rules_load' => q{
\set u random(1, 4)
\set m random(1, 3)
\set out random(0, 2000)
\set act random(1, 10)
BEGIN;
SELECT lt_step(:u, :m, :out, :act);
SELECT ai_record_usage('L-rb-' || :u, 'lt-gpt-b', 1000, 0) WHERE :act = 10 AND :m = 3;
\if :act = 10
ROLLBACK;
\else
COMMIT;
\endif
}
	});

# what each rule counted, from the log alone, per user and window
my $tz = "current_setting('ai_ratelimit.timezone')";
my %over = (
	"opus cents per day ($opus_day)" => qq{
		SELECT user_id, day, sum(cost_cents) FROM ai_usage WHERE model LIKE 'lt-opus-%'
		GROUP BY 1, 2 HAVING sum(cost_cents) > $opus_day},
	"all models cents per month ($month)" => qq{
		SELECT user_id, date_trunc('month', day), sum(cost_cents) FROM ai_usage
		GROUP BY 1, 2 HAVING sum(cost_cents) > $month},
	"L-1 lt-gpt-a cents per day ($l1_gpta_day)" => qq{
		SELECT day, sum(cost_cents) FROM ai_usage WHERE user_id = 'L-1' AND model = 'lt-gpt-a'
		GROUP BY 1 HAVING sum(cost_cents) > $l1_gpta_day},
	"gpt tokens per day ($gpt_tokens_day)" => qq{
		SELECT user_id, day, sum(input_tokens + output_tokens + cached_input_tokens) FROM ai_usage
		WHERE model LIKE 'lt-gpt-%' GROUP BY 1, 2
		HAVING sum(input_tokens + output_tokens + cached_input_tokens) > $gpt_tokens_day},
	"opus requests per hour ($opus_hour)" => qq{
		SELECT user_id, date_trunc('hour', timezone($tz, at)), count(*) FROM lt_log
		WHERE allowed AND model = 'lt-opus-1' GROUP BY 1, 2 HAVING count(*) > $opus_hour},
);
for my $rule (sort keys %over)
{
	is($node->safe_psql('postgres', $over{$rule}), '', "no user over $rule");
}

# the load reached the caps: refusals by rules, and spend near the maximum
cmp_ok($node->safe_psql('postgres',
		"SELECT count(*) FROM lt_log WHERE NOT allowed AND limited_by = 'rule'"),
	'>', 20, 'the rules refused requests');
note($node->safe_psql('postgres', q{
	SELECT string_agg(format('%s: opus %s cents, gpt %s tokens, all %s cents', user_id, o, g, a), '; ')
	FROM (SELECT user_id, sum(cost_cents) FILTER (WHERE model LIKE 'lt-opus-%') AS o,
	             sum(input_tokens + output_tokens) FILTER (WHERE model LIKE 'lt-gpt-%') AS g,
	             sum(cost_cents) AS a FROM ai_usage GROUP BY 1 ORDER BY 1) s}));
is($node->safe_psql('postgres',
		"SELECT count(*) FROM lt_log WHERE NOT allowed AND limited_by IS DISTINCT FROM 'rule'"),
	'0', 'only rules refused');

# Every estimate settled, released, rolled back or expired: a check is
# allowed exactly when the log leaves room for it under every rule that
# binds it, for small and large estimates (some fit, some do not).
sleep($ttl + 1);
my $answers = $node->safe_psql('postgres', q{
	SELECT format('%s %s %s/%s %s %s', u, m, e.cents, e.tokens, lt_room(u, m, e.cents, e.tokens),
	              lt_try(u, m, e.cents, e.tokens))
	FROM (VALUES ('L-1'), ('L-2'), ('L-3'), ('L-4')) us(u),
	     (VALUES ('lt-opus-1'), ('lt-gpt-a'), ('lt-gpt-b')) ms(m),
	     (VALUES (1, 1), (3, 300), (6, 1200), (12, 3000)) e(cents, tokens)
	ORDER BY 1});
my @rows = split /\n/, $answers;
is(scalar(@rows), 48, 'every user, model and estimate asked');
my @wrong = grep { my @f = split / /; $f[3] ne $f[4] } @rows;
is(join(', ', @wrong), '', 'allowed exactly when the log leaves room (user, model, estimate, room, allowed)');
my $fit = grep { (split / /)[3] eq 't' } @rows;
note("after the load, $fit of 48 checks fit");
cmp_ok($fit, '>', 0, 'some checks still fit');
cmp_ok($fit, '<', 48, 'some checks no longer fit');

done_testing();

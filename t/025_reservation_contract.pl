# The reservation is the contract, under load.  Clients load the server as
# an application does (test/app_client.py: check with a 10-cent estimate,
# call, record 10 cents in another transaction), 8 at a time, for 2 users
# each run, while the adversary's ordinary moves happen:
#
#   noid      records name no reservation
#   moves     members are moved between teams while their calls run, the
#             app naming no account, then naming it at check and record
#   misnamed  records name another team than their check
#   long      calls outlive ai_ratelimit.reservation_ttl, and extend it
#   retried   connections are terminated, so records are retried
#   dated     the teams' budgets are on one model, and records name the
#             provider's dated name of it (c-model-2025-01-15)
#
# From ai_usage alone: no user, team or organisation over its cap, no
# reservation recorded twice, every acknowledged record there.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(time sleep);
use lib 't';
use AiTest;

BAIL_OUT('python3 with psycopg 3 is missing: install python3-psycopg (scripts/test.sh does)')
  unless system('python3', '-c', 'import psycopg') == 0;

my ($user_cap, $team_cap, $org_cap) = (100, 40, 200);    # the teams bind first
my $base = PostgreSQL::Test::Utils::tempdir;
my $node = PostgreSQL::Test::Cluster->new('contract');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
max_connections = 40
ai_ratelimit.reservation_ttl = 3
});
$node->start;
$node->safe_psql('postgres', qq{
CREATE EXTENSION ai_ratelimit;
-- 1,000 tokens in and 1,000 out: 10 cents
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok)
    VALUES ('c-model', 50, 50), ('c-other', 50, 50);
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('c', NULL, NULL, $user_cap);
});

# a run: its own users (one organisation of two teams each), the clients
# in the background, what happens meanwhile, then what the clients saw
my $run = 0;
sub load
{
	my (%o) = @_;
	$run++;
	my $org = "o$run";
	my @users = ("u$run-1", "u$run-2");
	my $both = $o{both} ? 'true' : 'false';    # the first user in both teams
	my $rule_model = $o{rule_model} // '*';    # what the account rules count
	$node->safe_psql('postgres', qq{
INSERT INTO ai_accounts (account_id, parent_id) VALUES ('$org', NULL), ('$org-a', '$org'), ('$org-b', '$org');
INSERT INTO ai_account_members (account_id, user_id, is_default)
    VALUES ('$org-a', '$users[0]', true), ('$org-b', '$users[1]', true);
INSERT INTO ai_account_members (account_id, user_id, is_default)
    SELECT '$org-b', '$users[0]', false WHERE $both;
INSERT INTO ai_rules (scope, scope_id, model, metric, "window", max_value) VALUES
    ('account', '$org', '$rule_model', 'cents', 'month', $org_cap),
    ('account', '$org-a', '$rule_model', 'cents', 'month', $team_cap),
    ('account', '$org-b', '$rule_model', 'cents', 'month', $team_cap);
});
	my @h;
	my $options = $o{options} // '';
	$options =~ s/ORG/$org/g;
	for my $c (1 .. 8)
	{
		push @h, IPC::Run::start(
			[ 'timeout', '-s', 'KILL', $o{seconds} + 120, 'python3', 'test/app_client.py',
			  $node->connstr('postgres') . " application_name=contract", $c, join(',', @users),
			  'c', 'c-model', 1000, 1000, $o{call_ms}, "$base/$run.stop", "$base/$run.$c.jsonl",
			  $o{seconds}, $options ],
			'<', \undef, '>', "$base/$run.$c.out", '2>', "$base/$run.$c.err");
	}
	my $until = time + $o{seconds};
	while (time < $until)
	{
		$o{meanwhile}->($org, @users) if $o{meanwhile};
		sleep($o{every} // 0.2);
	}
	$_->finish for @h;
	my @lines;
	for my $c (1 .. 8)
	{
		open(my $in, '<', "$base/$run.$c.jsonl") or next;
		push @lines, map { decode_json($_) } <$in>;
		close($in);
	}
	my $what = $o{what};
	my @acked = grep { defined $_->{record} && defined $_->{cost} } @lines;
	note("$what: " . scalar(grep { $_->{allowed} } @lines) . ' checks allowed, '
		  . scalar(@acked) . ' records acknowledged');
	cmp_ok(scalar(@acked), '>', 3, "$what: calls were recorded");
	my @failed = grep { defined $_->{phase} && $_->{phase} eq 'record' && $_->{err} ne '40001'
						  || $_->{lost} } @lines;
	is(join(', ', map { $_->{err} // 'lost' } @failed), '', "$what: no record failed or was lost");
	my $users = join(',', map { "'$_'" } @users);
	is($node->safe_psql('postgres', qq{
		SELECT string_agg(format('%s %s', k, s), ', ') FROM (
		  SELECT user_id k, sum(cost_cents) s FROM ai_usage WHERE user_id IN ($users)
		  GROUP BY 1 HAVING sum(cost_cents) > $user_cap
		  UNION ALL
		  SELECT account_id, sum(cost_cents) FROM ai_usage WHERE user_id IN ($users)
		  GROUP BY 1 HAVING sum(cost_cents) > $team_cap
		  UNION ALL
		  SELECT '$org', sum(cost_cents) FROM ai_usage WHERE user_id IN ($users)
		  HAVING sum(cost_cents) > $org_cap) x}),
		'', "$what: no user, team or organisation over its cap");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FROM (SELECT reservation_id FROM ai_usage
		  WHERE user_id IN ($users) AND reservation_id IS NOT NULL
		  GROUP BY 1 HAVING count(*) > 1) x}),
		'0', "$what: no reservation recorded twice");
	if ($options !~ /noid/)
	{
		my %ids = map { $_->{record} => 1 } @acked;
		my $ids = join(',', keys %ids) || '0';
		is($node->safe_psql('postgres',
				"SELECT count(DISTINCT reservation_id) FROM ai_usage WHERE reservation_id IN ($ids)"),
			scalar(keys %ids), "$what: every acknowledged record is there");
	}
	return @lines;
}

load(what => 'records without reservation ids', options => 'noid', seconds => 5, call_ms => 300);

load(what => 'members moved between teams while their calls run', seconds => 6, call_ms => 300,
	meanwhile => sub {
		my ($org, @users) = @_;
		$node->safe_psql('postgres', qq{
			UPDATE ai_account_members SET account_id = CASE account_id WHEN '$org-a' THEN '$org-b' ELSE '$org-a' END
			WHERE user_id IN ('$users[0]', '$users[1]')});
	});

# the app names the account at check and record: a record after its user
# left the team still settles there (no 22023, no call lost)
load(what => 'members moved while their calls run, the app naming the team', seconds => 6,
	call_ms => 300, options => 'account=ORG-a',
	meanwhile => sub {
		my ($org, @users) = @_;
		$node->safe_psql('postgres', qq{
			UPDATE ai_account_members SET account_id = CASE account_id WHEN '$org-a' THEN '$org-b' ELSE '$org-a' END
			WHERE user_id IN ('$users[0]', '$users[1]')});
	});

my @lines = load(what => 'records naming another team than their check', seconds => 5, call_ms => 300,
	options => 'record_account=ORG-b', both => 1);
is($node->safe_psql('postgres', q{
	SELECT requests > 0 FROM ai_ratelimit_stats WHERE plan IS NULL AND limited_by = 'misnamed_record'}),
	't', 'misnamed records are counted');

load(what => 'calls longer than reservation_ttl that extend their hold', seconds => 9, call_ms => 4500,
	options => 'extend');

# the provider answers with its dated name: no price row of its own, so it
# is priced as c-model, and the teams' c-model budgets count it
load(what => 'records under the dated name of the model the teams budget', seconds => 5,
	call_ms => 300, rule_model => 'c-model', options => 'record_model=c-model-2025-01-15');
is($node->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT priced_as, ',') FROM ai_usage WHERE model = 'c-model-2025-01-15'}),
	'c-model', 'dated records are priced as their family');

load(what => 'records retried on connections terminated mid-call', seconds => 6, call_ms => 300,
	every => 0.4,
	meanwhile => sub {
		$node->safe_psql('postgres', q{
			SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = 'contract' AND pid <> pg_backend_pid()});
	});
note('records that repeated one whose answer was lost (nothing stored): '
	  . $node->safe_psql('postgres',
		"SELECT requests FROM ai_ratelimit_stats WHERE plan IS NULL AND limited_by = 'repeated_record'"));
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared counters are consistent');
done_testing();

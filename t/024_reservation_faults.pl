# A reservation whose id was returned survives what a commit survives.
# 8 clients load the server as an application does (test/app_client.py:
# check with a 20-cent estimate, call for 1.5 s, record 20 cents in another
# transaction, retrying a record whose connection was lost under the same
# id) for 2 users with 100-cent monthly budgets, while the server is
# stopped with -m immediate, then its postmaster killed with SIGKILL, then
# stopped with -m immediate right after a CHECKPOINT, with calls in flight
# each time.  Saves are an hour apart: only the WAL keeps
# what the checks reserved.  Then a streaming standby whose primary waits
# for it (synchronous_standby_names) is promoted with calls in flight.
# From ai_usage alone: no user over its budget, no reservation recorded
# twice, every acknowledged record there.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use JSON::PP;
use lib 't';
use AiTest;

BAIL_OUT('python3 with psycopg 3 is missing: install python3-psycopg (scripts/test.sh does)')
  unless system('python3', '-c', 'import psycopg') == 0;

my $cap = 100;
my $base = PostgreSQL::Test::Utils::tempdir;

# the route's clients, in the background for $seconds
sub start_clients
{
	my ($conninfo, $tag, $n, $seconds, $users) = @_;
	my @h;
	for my $c (1 .. $n)
	{
		push @h, IPC::Run::start(
			[ 'timeout', '-s', 'KILL', $seconds + 120, 'python3', 'test/app_client.py',
			  $conninfo, $c, $users, 'f', 'f-model', 1000, 1000, 1500,
			  "$base/$tag.stop", "$base/$tag.$c.jsonl", $seconds ],
			'<', \undef, '>', "$base/$tag.$c.out", '2>', "$base/$tag.$c.err");
	}
	return \@h;
}

sub stop_clients
{
	my ($tag, $h) = @_;
	$_->finish for @$h;		# each stops at its time, its last record in
	my @lines;
	for my $c (1 .. scalar(@$h))
	{
		open(my $in, '<', "$base/$tag.$c.jsonl") or next;
		push @lines, map { decode_json($_) } <$in>;
		close($in);
	}
	return @lines;
}

# what every acknowledged record must have left, and the budgets
sub verify
{
	my ($node, $what, @lines) = @_;
	my @acked = grep { defined $_->{record} && defined $_->{cost} } @lines;
	my @allowed = grep { defined $_->{check} && $_->{allowed} } @lines;
	note("$what: " . scalar(@allowed) . ' checks allowed, ' . scalar(@acked) . ' records acknowledged, '
		  . scalar(grep { $_->{lost} } @lines) . ' lost');
	cmp_ok(scalar(@acked), '>', 5, "$what: the clients recorded calls");
	is($node->safe_psql('postgres', qq{
		SELECT string_agg(format('%s %s', user_id, s), ', ') FROM (
		  SELECT user_id, sum(cost_cents) s FROM ai_usage GROUP BY 1 HAVING sum(cost_cents) > $cap) x}),
		'', "$what: no user over its $cap-cent budget");
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM (SELECT reservation_id FROM ai_usage WHERE reservation_id IS NOT NULL
		                      GROUP BY 1 HAVING count(*) > 1) x}),
		'0', "$what: no reservation recorded twice");
	my $ids = join(',', map { $_->{record} } @acked) || '0';
	is($node->safe_psql('postgres',
			"SELECT count(DISTINCT reservation_id) FROM ai_usage WHERE reservation_id IN ($ids)"),
		scalar(keys %{ { map { $_->{record} => 1 } @acked } }),
		"$what: every acknowledged record is there");
}

my $setup = qq{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('f-model', 100, 100);
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('f', NULL, NULL, $cap);
};

# ---- a crash with calls in flight: stop -m immediate, then SIGKILL ----
# a primary whose saves are an hour apart: only the WAL keeps what the
# checks reserved
sub primary
{
	my ($name) = @_;
	my $n = PostgreSQL::Test::Cluster->new($name);
	$n->init(allows_streaming => 1);
	$n->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.save_interval = '1h'
ai_ratelimit.reservation_ttl = 120
});
	$n->start;
	$n->safe_psql('postgres', $setup);
	return $n;
}

my $node = primary('faults');

# the first calls are in flight 0.7 s after the clients start: every one
# of them would fit the budgets, and holds the room until it records
sub in_flight { select(undef, undef, undef, 0.7); }

my $h = start_clients($node->connstr('postgres'), 'stop', 8, 6, 'f-1,f-2');
in_flight();
$node->stop('immediate');
$node->start;
my @lines = stop_clients('stop', $h);
verify($node, 'immediate stop', @lines);

# SIGKILL to the postmaster: its children leave as they notice, and the
# next start recovers from the WAL
$h = start_clients($node->connstr('postgres'), 'kill', 8, 6, 'f-3,f-4');
in_flight();
$node->kill9;
my $tries = 0;
select(undef, undef, undef, 0.2) while `pgrep -f 'postgres: faults: '` ne '' && $tries++ < 100;
$node->start;
@lines = stop_clients('kill', $h);
verify($node, 'SIGKILL of the postmaster', @lines);

# a checkpoint with calls in flight, then -m immediate: the next start
# replays only from the checkpoint on, and the saves are an hour apart; the
# checkpoint guard (src/guard.c) held the checkpoint until a save had taken
# every hold made before it
$h = start_clients($node->connstr('postgres'), 'checkpoint', 8, 6, 'f-5,f-6');
in_flight();
$node->safe_psql('postgres', 'CHECKPOINT');
$node->stop('immediate');
$node->start;
@lines = stop_clients('checkpoint', $h);
verify($node, 'a checkpoint, then an immediate stop', @lines);
is($node->safe_psql('postgres', 'SELECT count(*) FROM ai_ratelimit_verify()'), '0',
	'the shared counters are consistent after the crashes');
$node->stop;

# ---- promotion of a synchronous standby with calls in flight ----
my $primary = primary('sync_primary');
$primary->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('sync_standby');
$standby->init_from_backup($primary, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', "cluster_name = 'sync_standby'");
$standby->start;
$primary->safe_psql('postgres', "ALTER SYSTEM SET synchronous_standby_names = 'sync_standby'");
$primary->reload;
$primary->poll_query_until('postgres',
	"SELECT sync_state = 'sync' FROM pg_stat_replication WHERE application_name = 'sync_standby'")
  or die 'the standby never became synchronous';

my $multi = 'host=' . $primary->host . ',' . $standby->host . ' port=' . $primary->port . ','
  . $standby->port . ' dbname=postgres target_session_attrs=read-write';
$h = start_clients($multi, 'promote', 8, 6, 'f-1,f-2');
in_flight();
$primary->stop('immediate');
$standby->promote;
@lines = stop_clients('promote', $h);
verify($standby, 'promotion of a synchronous standby', @lines);
$standby->stop;

done_testing();

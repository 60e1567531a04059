# High availability as it is run: one etcd and a Patroni cluster of two
# nodes with ai_ratelimit preloaded, on loopback.  Clients load it as the
# README's route does: check with a priced estimate, call, and record in
# another transaction (retried under its reservation id when the connection
# is lost), through a multi-host connection string with
# target_session_attrs=read-write, against small
# caps, while the leader's postmaster is killed (Patroni restarts it), then
# the whole leader node (Patroni fails over), the old leader rejoins
# (pg_rewind) and a planned switchover brings the leadership back.
#
# At the end: no user is over its cap by a cent; the daily counts handed
# back are at most what was allowed in one ai_ratelimit.save_interval
# before each crash; every reservation id was issued once; every check a
# client saw acknowledged is logged, and every record acknowledged is in
# ai_usage once (none twice); the rejoined node's counters
# equal the leader's; and clients saw only 25006 or a lost connection while
# the leadership moved, never an error from a limit.
#
# Runs on every major: scripts/test.sh installs Debian's patroni and etcd
# on the host, and the prepared roots of 17 and 18 have them; a missing tool
# fails it.
# Everything listens on 127.0.0.1 and runs under a time limit.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd qw(abs_path);
use File::Path qw(make_path);
use IPC::Run;
use Time::HiRes qw(time sleep);

# a missing tool fails the run
for my $bin (qw(patroni patronictl etcd etcdctl))
{
	BAIL_OUT("$bin is not installed (Debian: apt-get install patroni etcd-server etcd-client; scripts/test.sh does)")
	  unless system("command -v $bin >/dev/null 2>&1") == 0;
}
# Patroni's etcd3 store needs python3-etcd, which Debian's patroni does
# not always pull in (trixie's prefers the consul client)
BAIL_OUT('python3-etcd is missing: Patroni cannot reach etcd (apt-get install python3-etcd; scripts/test.sh does)')
  unless system('python3', '-c', 'import etcd') == 0;
BAIL_OUT('python3 with psycopg 3 is missing: install python3-psycopg (scripts/test.sh does)')
  unless system('python3', '-c', 'import psycopg') == 0;

my $bindir = `pg_config --bindir`;
chomp $bindir;
my $base = "${PostgreSQL::Test::Utils::tmp_check}/patroni";
make_path($base);
$base = abs_path($base);    # a process's working directory reads absolute
my $save_interval = 1;    # seconds
my ($users, $cap, $clients) = (24, 30, 4);    # each user: 30 cents a month

my %port = map { $_ => PostgreSQL::Test::Cluster::get_free_port() }
  qw(etcd_client etcd_peer api1 api2 pg1 pg2);
my @procs;    # everything started, stopped at the end whatever happens

sub start_bg
{
	my ($log, @cmd) = @_;
	my $h = IPC::Run::start([ 'timeout', '-s', 'KILL', '900', @cmd ],
		'<', \undef, '>>', $log, '2>&1');
	push @procs, $h;
	return $h;
}

# kill a process started by start_bg, and its command under timeout
sub kill_bg
{
	my ($h) = @_;
	my $pid = eval { $h->{KIDS}->[0]->{PID} };
	system("pkill -KILL -P $pid") if $pid;
	eval { $h->kill_kill(grace => 0) };
}

END
{
	local $?;    # the test's own exit status stays
	return unless defined $base;    # not run: nothing was started
	kill_bg($_) for @procs;
	# servers outlive a killed Patroni: stop every process of each node too
	kill 'KILL', node_processes($_) for 1, 2;
}

# etcd, v3 API, on loopback
start_bg("$base/etcd.log", 'etcd', '--name', 'e1', '--data-dir', "$base/etcd",
	'--listen-client-urls', "http://127.0.0.1:$port{etcd_client}",
	'--advertise-client-urls', "http://127.0.0.1:$port{etcd_client}",
	'--listen-peer-urls', "http://127.0.0.1:$port{etcd_peer}",
	'--initial-advertise-peer-urls', "http://127.0.0.1:$port{etcd_peer}",
	'--initial-cluster', "e1=http://127.0.0.1:$port{etcd_peer}");
my $etcd_ok = 0;
for (1 .. 100)
{
	$etcd_ok = 1, last
	  if system("etcdctl --endpoints=127.0.0.1:$port{etcd_client} endpoint health >/dev/null 2>&1") == 0;
	sleep 0.2;
}
ok($etcd_ok, 'etcd answers on loopback');

sub write_config
{
	my ($n) = @_;
	open my $fh, '>', "$base/n$n.yml" or die;
	print $fh <<"EOF";
scope: ai-ratelimit-test
name: n$n
restapi:
  listen: 127.0.0.1:$port{"api$n"}
  connect_address: 127.0.0.1:$port{"api$n"}
etcd3:
  hosts: 127.0.0.1:$port{etcd_client}
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        shared_preload_libraries: ai_ratelimit
        ai_ratelimit.save_interval: ${save_interval}s
        ai_ratelimit.timezone: UTC
        wal_log_hints: 'on'
        max_connections: 40
  initdb:
    - auth: trust
postgresql:
  listen: 127.0.0.1:$port{"pg$n"}
  connect_address: 127.0.0.1:$port{"pg$n"}
  data_dir: $base/d$n
  bin_dir: $bindir
  pgpass: $base/pgpass$n
  authentication:
    replication:
      username: postgres
    superuser:
      username: postgres
    rewind:
      username: postgres
  parameters:
    unix_socket_directories: '$base'
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
tags:
  nofailover: false
EOF
	close $fh;
}
write_config($_) for 1, 2;
my %patroni;
sub start_node { my ($n) = @_; $patroni{$n} = start_bg("$base/n$n.log", 'patroni', "$base/n$n.yml"); }

# one query on one node; undef when it fails (on psql's input: a query
# naming thousands of reservation ids is longer than one argument may be;
# a psql that could not connect leaves its input unread: a broken pipe)
sub q_at
{
	my ($n, $sql) = @_;
	my ($out, $err) = ('', '');
	eval {
		IPC::Run::run([ 'psql', '-X', '-qAt', '-v', 'ON_ERROR_STOP=1',
				"host=127.0.0.1 port=$port{\"pg$n\"} dbname=postgres connect_timeout=5" ],
			'<', \$sql, '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	} or return undef;
	chomp $out;
	return $out;
}

# the node whose server is a primary now, or 0
sub leader
{
	for my $n (1, 2)
	{
		my $r = q_at($n, 'SELECT NOT pg_is_in_recovery()');
		return $n if defined $r && $r eq 't';
	}
	return 0;
}

sub wait_for
{
	my ($what, $secs, $cond) = @_;
	my $t0 = time;
	while (time - $t0 < $secs)
	{
		my $r = $cond->();
		return $r if $r;
		sleep 0.2;
	}
	return 0;
}

# the end of a node's Patroni log, for a step that failed
sub patroni_log_tail
{
	my ($n) = @_;
	open my $fh, '<', "$base/n$n.log" or return "(no log of node $n)";
	my @lines = <$fh>;
	close $fh;
	return join('', grep { defined } @lines[ -40 .. -1 ]);
}

start_node(1);
ok(wait_for('n1 leads', 90, sub { leader() == 1 }), 'node 1 bootstraps and leads')
  or diag("node 1's Patroni log ends:\n" . patroni_log_tail(1));
start_node(2);
ok(wait_for('n2 streams', 90, sub {
	my $r = q_at(1, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
	defined $r && $r eq '1' }), 'node 2 streams from node 1');

q_at(1, qq{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, burst_limit, daily_limit, monthly_budget_cents) VALUES ('p', 1000000, 1000000, $cap);
-- cheap calls: 0.02 cent in, up to 0.02 out, so the caps are reached late in the run
INSERT INTO ai_model_prices (model, input_usd_per_mtok, output_usd_per_mtok) VALUES ('p-model', 0.2, 0.2);
-- a third of the users may spend only 3 cents: their caps are reached early
INSERT INTO ai_user_limits (user_id, monthly_budget_cents)
SELECT 'p-' || g, 3 FROM generate_series(1, $users / 3) g;
CREATE TABLE p_log (client int, seq int, user_id text, allowed boolean, reservation_id bigint,
                    limited_by text, at timestamptz DEFAULT clock_timestamp(),
                    PRIMARY KEY (client, seq));
}) // die 'setup failed';

# the load: every client through both nodes, to whichever is read-write
my $conninfo = "host=127.0.0.1,127.0.0.1 port=$port{pg1},$port{pg2} dbname=postgres"
  . " user=postgres target_session_attrs=read-write";
my $stop = "$base/stop";
my @client_logs;
for my $c (1 .. $clients)
{
	push @client_logs, "$base/client$c.jsonl";
	start_bg("$base/client$c.err", 'python3', 'test/patroni_client.py', $conninfo, $c, $users,
		$stop, "$base/client$c.jsonl", 600);
}
sleep 5;

sub postmaster_pid
{
	my ($n) = @_;
	open my $fh, '<', "$base/d$n/postmaster.pid" or return 0;
	my $pid = <$fh>;
	close $fh;
	chomp $pid;
	return $pid;
}

# the processes whose parent is pid
sub children_of
{
	my ($parent) = @_;
	my @pids;
	opendir my $dh, '/proc' or return ();
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		open my $fh, '<', "/proc/$pid/stat" or next;
		my $stat = <$fh>;
		close $fh;
		my ($ppid) = $stat =~ /\)\s+\S+\s+(\d+)/;
		push @pids, $pid if defined $ppid && $ppid == $parent;
	}
	closedir $dh;
	return @pids;
}

# every process of node n: those whose working directory is its data directory
sub node_processes
{
	my ($n) = @_;
	my @pids;
	opendir my $dh, '/proc' or return ();
	for my $pid (grep { /^\d+$/ } readdir $dh)
	{
		my $cwd = readlink("/proc/$pid/cwd") // next;
		push @pids, $pid if $cwd eq "$base/d$n";
	}
	closedir $dh;
	return @pids;
}

my %events;    # what happened when (epoch seconds), for the crash windows
# 1. the leader's postmaster is killed: Patroni restarts it in place, or,
# when it cannot within its TTL, fails over
$events{postmaster_kill} = time;
my $postmaster = postmaster_pid(1);
my @backends = children_of($postmaster);
kill 'KILL', $postmaster;
# A backend that was waiting for the synchronous standby when its postmaster
# died is told to die but not interrupted (PostgreSQL's syncrep.c), and
# falls through to reading commands from its stdin, which Patroni keeps
# open: it never exits, and the shared memory it holds keeps Patroni from
# starting the server again.  A supervisor that kills the node's process
# group ends such backends; so does this test, a second after the kill.
sleep 1;
my @stuck = grep { kill(0, $_) } @backends;
note(scalar(@stuck) . ' process(es) of node 1 still alive 1 s after its postmaster died');
kill 'KILL', @stuck if @stuck;
my $after_kill = wait_for('a leader', 90, sub { leader() });
ok($after_kill, 'a node leads after the postmaster was killed');
note($after_kill == 1 ? 'Patroni restarted node 1 in place'
	  : 'Patroni could not restart node 1 in time and failed over to node 2');
ok(wait_for('two nodes', 120, sub {
	my $r = q_at(leader(), "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
	defined $r && $r eq '1' }), 'both nodes run again, one streaming from the other');
sleep 5;

# 2. the whole leader node dies: Patroni fails over to the other
my $dead = leader();
my $other = 3 - $dead;
$events{node_kill} = time;
kill_bg($patroni{$dead});
# the whole node: every process of it, until none is left
for (1 .. 50)
{
	my @left = node_processes($dead);
	last unless @left;
	kill 'KILL', @left;
	sleep 0.1;
}
my $failover = wait_for("n$other leads", 90, sub { leader() == $other ? time : 0 });
ok($failover, "node $other takes over when node $dead dies")
  or diag("node ${other}'s Patroni log ends:\n" . patroni_log_tail($other)
	  . "\nprocesses of node $dead left: " . join(' ', node_processes($dead))
	  . "\nnode $other answers: " . (q_at($other, 'SELECT pg_is_in_recovery()') // 'nothing')
	  . "\nnode $dead answers: " . (q_at($dead, 'SELECT pg_is_in_recovery()') // 'nothing'));
note(sprintf('failover: node %d read-write %.1f s after node %d died', $other,
		$failover - $events{node_kill}, $dead))
  if $failover;
sleep 5;

# 3. the old leader rejoins as a replica (pg_rewind when it must)
start_node($dead);
ok(wait_for('rejoin', 120, sub {
	my $r = q_at($other, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
	defined $r && $r eq '1' }), "node $dead rejoins and streams from node $other");
sleep 3;

# 4. a planned switchover back to it, once it is the synchronous standby
$events{switchover} = time;
my $switched = wait_for('switchover', 90, sub {
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'patronictl', '-c', "$base/n1.yml", 'switchover', '--leader', "n$other",
			'--candidate', "n$dead", '--force' ], '<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout(120));
	return ($out . $err) =~ /Successfully switched over/ ? 1 : do { sleep 1; 0 };
});
ok($switched, "patronictl switches over to node $dead");
ok(wait_for('switched', 90, sub { leader() == $dead }), "node $dead leads again");
ok(wait_for('streams', 90, sub {
	my $r = q_at($dead, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'");
	defined $r && $r eq '1' }), "node $other streams from node $dead again");
sleep 5;

# the load ends
open my $sf, '>', $stop or die;
close $sf;
ok(wait_for('clients end', 60, sub {
	my $done = 0;
	for my $f (@client_logs) { $done++ if -f $f && `tail -n 1 '$f'` =~ /"done": true/; }
	$done == $clients }), 'every client ended');

# what the clients saw
my (%acked, %unknown, %errors, $allowed_acked, @recorded, @record_lost);
for my $f (@client_logs)
{
	open my $fh, '<', $f or die;
	while (my $line = <$fh>)
	{
		my ($c) = $line =~ /"c": (\d+)/;
		my ($seq) = $line =~ /"seq": (\d+)/;
		if ($line =~ /"ok": true/)
		{
			$acked{"$c:$seq"} = 1;
			$allowed_acked++ if $line =~ /"allowed": true/;
		}
		elsif ($line =~ /"recorded": (\d+)/) { push @recorded, $1; }
		elsif ($line =~ /"record_lost": (\d+)/) { push @record_lost, $1; }
		elsif ($line =~ /"unknown": true/) { $unknown{"$c:$seq"} = 1; }
		elsif ($line =~ /"err": "([^"]+)"/) { $errors{$1}++; }
	}
	close $fh;
}
note('clients: ' . scalar(keys %acked) . ' checks acknowledged (' . ($allowed_acked // 0)
	  . ' allowed), ' . scalar(@recorded) . ' records acknowledged, ' . scalar(keys %unknown)
	  . ' checks lost during COMMIT; errors: '
	  . join(', ', map { "$_ $errors{$_}" } sort keys %errors));
cmp_ok(scalar(keys %acked), '>', 200, 'the load ran through it all');
is(join(',', grep { $_ ne '25006' && $_ ne 'connection' && $_ !~ /^(57P0[123]|08\d\d\d)$/ } sort keys %errors),
	'', 'clients saw only 25006 or a lost connection while the leadership moved');

my $L = leader();
is($L, $dead, "node $dead leads at the end");

# every acknowledged commit is there once (its log row and its usage row)
my $present = q_at($L, 'SELECT client || \':\' || seq FROM p_log');
my %in_log = map { $_ => 1 } split /\n/, $present;
my @missing = grep { !$in_log{$_} } sort keys %acked;
is(join(' ', @missing), '', 'every commit a client saw acknowledged survived the failover and the switchover');
my $recorded = join(',', @recorded) || '0';
is(q_at($L, qq{SELECT count(*) FROM p_log l
	LEFT JOIN (SELECT reservation_id, count(*) AS n FROM ai_usage GROUP BY 1) u USING (reservation_id)
	WHERE l.allowed AND (coalesce(u.n, 0) > 1
	      OR (l.reservation_id IN ($recorded) AND coalesce(u.n, 0) <> 1))}),
	'0', 'every acknowledged record of an allowed check has its usage row exactly once, and none has two');
is(scalar(@record_lost), 0, 'every record was acknowledged in the end (retried under its id)');
is(q_at($L, 'SELECT count(*) - count(DISTINCT reservation_id) FROM p_log WHERE reservation_id IS NOT NULL'),
	'0', 'every reservation id was issued once');
is(q_at($L, 'SELECT count(*) - count(DISTINCT reservation_id) FROM ai_usage WHERE reservation_id IS NOT NULL'),
	'0', 'no reservation id was settled twice')
  or diag("reservations settled twice:\n" . q_at($L, q{
	SELECT string_agg(format('%s %s %s %s', reservation_id, user_id, created_at, cost_cents), E'\n'
	                  ORDER BY reservation_id, created_at)
	FROM ai_usage WHERE reservation_id IN
	  (SELECT reservation_id FROM ai_usage WHERE reservation_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1)})
	  . "\nevents: " . join(', ', map { sprintf('%s at %.3f', $_, $events{$_}) } sort keys %events));

# no user over its cap by a cent
my $caps = "SELECT u.user_id, u.s, coalesce(l.monthly_budget_cents, $cap) AS cap
	FROM (SELECT user_id, sum(cost_cents) AS s FROM ai_usage GROUP BY 1) u
	LEFT JOIN ai_user_limits l USING (user_id)";
note('spend per user against its cap (cents): '
	  . q_at($L, "SELECT string_agg(user_id || ' ' || s || '/' || cap, ', ' ORDER BY user_id) FROM ($caps) x"));
is(q_at($L, "SELECT count(*) FROM ($caps) x WHERE s > cap"), '0', 'no user is over its cap by a cent');
cmp_ok(q_at($L, "SELECT count(*) FROM p_log WHERE NOT allowed AND limited_by = 'monthly_budget'"), '>', 0,
	'the caps were reached');

# daily counts handed back: the checks logged as allowed against the count
# the leader holds, per user; a crash loses at most what was allowed in one
# save_interval before it (the postmaster kill and the node kill)
sleep($save_interval + 1);
my $handed = q_at($L, q{
	SELECT coalesce(sum(GREATEST(l.n - coalesce(s.daily_used, 0), 0)), 0)
	FROM (SELECT user_id, count(*) AS n FROM p_log WHERE allowed GROUP BY 1) l
	LEFT JOIN ai_ratelimit_status s USING (user_id)});
my $window = 0;
for my $e ('postmaster_kill', 'node_kill')
{
	$window += q_at($L, sprintf(q{SELECT count(*) FROM p_log WHERE allowed
		AND at > to_timestamp(%.3f) - interval '%d seconds' AND at <= to_timestamp(%.3f)},
		$events{$e}, $save_interval + 1, $events{$e}));
}
note("daily counts handed back: $handed, of $window checks allowed in the "
	  . ($save_interval + 1) . " s before each crash");
cmp_ok($handed, '<=', $window, 'daily counts handed back are at most what one save_interval allowed before each crash');

# the replica's counters equal the leader's once it has caught up
my $R = 3 - $L;
my $status = q{SELECT string_agg(format('%s %s %s %s', user_id, daily_used, open_reservations, reserved_cents),
	';' ORDER BY user_id) FROM ai_ratelimit_status WHERE user_id LIKE 'p-%'};
my $lsn = q_at($L, 'SELECT pg_current_wal_lsn()');
ok(wait_for('replica catches up', 60, sub {
	my $r = q_at($R, "SELECT pg_last_wal_replay_lsn() >= '$lsn'");
	defined $r && $r eq 't' }), 'the replica replays the leader\'s last save');
is(q_at($R, $status), q_at($L, $status), 'the rejoined node\'s counters equal the leader\'s');

done_testing();

# Helpers the TAP tests of ai_ratelimit share.
package AiTest;
use strict;
use warnings;
use Exporter 'import';
use Test::More;
use IPC::Run;

our @EXPORT = qw(sql saved start_pgbouncer stop_pgbouncer);
our @EXPORT_OK = qw(answers_again);

# one query in the postgres database, its output
sub sql
{
	my ($node, $q) = @_;
	return $node->safe_psql('postgres', $q);
}

# Wait until the saver has saved everything done so far: a save that
# started after $t took every change made before it, and one change after
# $t (a check of a marker user under $plan) makes sure there is such a save
# (one that started just before $t may have taken them all and left
# nothing to save).
sub saved
{
	my ($node, $plan) = @_;
	my $t = sql($node, 'SELECT clock_timestamp()');
	sql($node, "SELECT allowed FROM ai_check_limit('zz-save-marker', '$plan')");
	ok($node->poll_query_until('postgres', "SELECT last_save > '$t' FROM ai_ratelimit_saves()"),
		$node->name . ': saved');
}

# Wait until $node answers queries again, after a crash restart; false
# after 3 minutes.  The query goes in psql's arguments: a psql that finds
# the server still down may exit before reading a query on its input, and
# the write to it fails (a broken pipe), which poll_query_until does not
# survive.
sub answers_again
{
	my ($node) = @_;
	for (1 .. 1800)
	{
		my ($out, $err) = ('', '');
		IPC::Run::run([ 'psql', '-X', '-qAt', '-d', $node->connstr('postgres'),
				'-c', 'SELECT true' ], '<', \undef, '>', \$out, '2>', \$err);
		return 1 if $out =~ /^t$/m;
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

# PgBouncer in transaction mode in front of $node's postgres database, for
# the OS user, with $pool server connections; listens on a socket in $dir.
# Returns its port.  A missing or failing pgbouncer ends the run.
sub start_pgbouncer
{
	my ($node, $dir, $pool) = @_;
	my $pgbouncer = (grep { -x } '/usr/sbin/pgbouncer', '/usr/bin/pgbouncer')[0];
	BAIL_OUT('pgbouncer is missing: install pgbouncer (scripts/test.sh does)') unless $pgbouncer;
	my $user = scalar getpwuid($<);
	my ($host, $pgport) = ($node->host, $node->port);
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	open my $fh, '>', "$dir/userlist.txt" or die;
	print $fh qq{"$user" ""\n};
	close $fh;
	open $fh, '>', "$dir/pgbouncer.ini" or die;
	print $fh <<"INI";
[databases]
postgres = host=$host port=$pgport dbname=postgres
[pgbouncer]
unix_socket_dir = $dir
listen_port = $port
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 100
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
	close $fh;
	system($pgbouncer, '-d', "$dir/pgbouncer.ini") == 0 or BAIL_OUT('pgbouncer did not start');
	my $t = time;
	sleep(1) until -S "$dir/.s.PGSQL.$port" || time - $t > 30;
	return $port;
}

sub stop_pgbouncer
{
	my ($dir) = @_;
	kill 'TERM', PostgreSQL::Test::Utils::slurp_file("$dir/pgbouncer.pid") =~ s/\s+//gr;
}

1;

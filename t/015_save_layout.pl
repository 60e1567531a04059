# Counters saved by an earlier release are read after an upgrade: release
# 1.2 wrote layout version 2 (a shorter header, no deltas), releases 1.3
# and 1.4 version 3 (16 bytes of each user id) and release 1.5 version 4
# (no entry kind, no rule holds with a reservation), which this library
# still reads, reservations under their own ids.  Ids are saved whole up to 40
# bytes, so a UUID finds its row in ai_ratelimit_status after a restart.  A layout this
# library does not know is left alone with a LOG that says why, not called
# damaged.  The files are made here from what this build saved, rewritten
# byte for byte in the older layout, with the CRC-32C they carry.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# CRC-32C (Castagnoli), as PostgreSQL computes it
my @table = map {
	my $c = $_;
	$c = ($c & 1) ? (($c >> 1) ^ 0x82F63B78) : ($c >> 1) for 1 .. 8;
	$c
} 0 .. 255;

sub crc32c
{
	my $c = 0xFFFFFFFF;
	$c = $table[($c ^ $_) & 0xFF] ^ ($c >> 8) for unpack('C*', $_[0]);
	return $c ^ 0xFFFFFFFF;
}

my $node = PostgreSQL::Test::Cluster->new('layout');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.timezone = 'UTC'
});
$node->start;
sub sql { return $node->safe_psql('postgres', $_[0]); }
sql(q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans (plan, daily_limit, monthly_budget_cents) VALUES ('cap', 10, 100);
});
sql("SELECT allowed FROM ai_check_limit('ivy', 'cap')") for 1 .. 4;
my $id = sql("SELECT reservation_id FROM ai_check_limit('ivy', 'cap', 70)");
like($id, qr/^\d+$/, 'ivy holds 70 cents');
my $uuid = 'f47ac10b-58cc-4372-a567-0e02b3c479d5';
sql("SELECT allowed FROM ai_check_limit('$uuid', 'cap')") for 1 .. 2;
$node->restart;
is(sql("SELECT daily_used || ' ' || user_id_truncated FROM ai_ratelimit_status WHERE user_id = '$uuid'"),
	'2 false', 'after a restart a UUID finds its row, whole');
$node->stop;

my $base = $node->data_dir . '/pg_stat/ai_ratelimit.dat';
my $bytes = slurp_file($base);
# version 3: magic, version, ring, nentries, nresv, ntomb (uint32), base id,
# written at, shutdown checkpoint (64 bits): 48 bytes; then the rest; then
# the CRC of all that
my ($magic, $version, $ring, $nentries, $nresv, $ntomb, $base_id, $written, $lsn) =
  unpack('L6 Q q Q', substr($bytes, 0, 48));
my $body = substr($bytes, 48, length($bytes) - 52);
is($version, 5, 'this build saves layout version 5');
# an entry: 147 bytes of counters, then the id: 40 bytes since version 4,
# then the cached spend (200 bytes: version 4), then the kind (208 with
# padding: version 5); 16 bytes of id in version 3 (168 with padding).  A
# reservation is 40 bytes, then its rule holds (72 with padding: version
# 5); a tombstone is 16.
my $entries = length($body) - 72 * $nresv - 16 * $ntomb;
is($entries, 208 * $nentries, 'its entries are 208 bytes each');
is(unpack('L', substr($bytes, -4)), crc32c(substr($bytes, 0, -4)),
	'the CRC-32C here is the one the file carries');
my $resv = join('', map { substr($body, $entries + 72 * $_, 40) } 0 .. $nresv - 1);
my $tombs = substr($body, $entries + 72 * $nresv);
my $v4 = join('', map { substr($body, 208 * $_, 200) } 0 .. $nentries - 1) . $resv . $tombs;
my $v3 = join('', map { substr($body, 208 * $_, 163) . "\0" x 5 } 0 .. $nentries - 1) . $resv . $tombs;

sub write_base
{
	my ($head) = @_;
	my $body = $head =~ /^.{4}\x04/s ? $v4 : $v3;
	open(my $f, '>:raw', $base) or die "could not write $base: $!";
	print $f $head, $body, pack('L', crc32c($head . $body));
	close($f);
	unlink($node->data_dir . '/pg_stat/ai_ratelimit.delta');
}

# layout version 4 (release 1.5): this build's header and ids, no kinds
write_base(pack('L6 Q q Q', $magic, 4, $ring, $nentries, $nresv, $ntomb, $base_id, $written, $lsn));
my $log = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/ai_ratelimit is reading counters saved in layout version 4/, $log),
	'a version 4 base is read, and the log says so');
is(sql("SELECT daily_used || ' ' || user_id_truncated FROM ai_ratelimit_status WHERE user_id = '$uuid'"),
	'2 false', 'a UUID comes back whole');
is(sql("SELECT allowed FROM ai_check_limit('ivy', 'cap', 31)"), 'f',
	'a reservation holds its 70 cents');
$node->stop;

# layout version 3: this build's header, entries with 16 bytes of the id
write_base(pack('L6 Q q Q', $magic, 3, $ring, $nentries, $nresv, $ntomb, $base_id, $written, $lsn));
$log = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/ai_ratelimit is reading counters saved in layout version 3/, $log),
	'a version 3 base is read, and the log says so');
ok(!$node->log_contains(qr/ignoring damaged|not at the last shutdown/, $log),
	'not called damaged, nor a failed shutdown save');
is(sql("SELECT daily_used FROM ai_ratelimit_status WHERE user_id = 'ivy'"), '5',
	'its daily count is back');
is(sql("SELECT daily_used || ' ' || length(user_id) || ' ' || user_id_truncated FROM ai_ratelimit_status WHERE user_id LIKE 'f47ac10b-58cc-43%'"),
	'2 17 true', 'a UUID it cut to 16 bytes shows them and an ellipsis, marked cut');
sql("SELECT allowed FROM ai_check_limit('$uuid', 'cap')");
is(sql("SELECT daily_used || ' ' || user_id_truncated FROM ai_ratelimit_status WHERE user_id = '$uuid'"),
	'3 false', 'and its next check makes it whole');
$node->stop;

# layout version 2: magic, version, ring, nentries, nresv, 4 bytes of
# padding, written at: 32 bytes
write_base(pack('L5 x4 q', $magic, 2, $ring, $nentries, $nresv, $written));
$log = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/ai_ratelimit is reading counters saved in layout version 2/, $log),
	'a version 2 base is read, and the log says so');
ok(!$node->log_contains(qr/ignoring damaged|not at the last shutdown/, $log),
	'not called damaged, nor a failed shutdown save');
is(sql("SELECT daily_used FROM ai_ratelimit_status WHERE user_id = 'ivy'"), '5',
	'its daily count is back');
is(sql("SELECT allowed FROM ai_check_limit('ivy', 'cap', 31)"), 'f',
	'its reservation holds its 70 cents');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT ai_record_usage('ivy', 'gpt-4o', 0, 1000, 0, $id)");
is($err, '', 'and is settled under its own id');
is(sql("SELECT reserved_cents FROM ai_ratelimit_status WHERE user_id = 'ivy'"), '0', 'nothing held after it');
cmp_ok(sql("SELECT reservation_id FROM ai_check_limit('ivy', 'cap', 1)"), '>', $id,
	'new ids are above the restored one');
$node->stop;

# an unknown layout: left alone, with the reason in the log
write_base(pack('L6 Q q Q', $magic, 99, $ring, $nentries, $nresv, $ntomb, $base_id, $written, $lsn));
$log = -s $node->logfile;
$node->start;
ok($node->log_contains(qr/ignoring ai_ratelimit counters saved in layout version 99: this library reads versions 2 to 5/, $log),
	'a base of an unknown version is ignored with a LOG saying why');
ok(!$node->log_contains(qr/ignoring damaged/, $log), 'not called damaged');
is(sql("SELECT count(*) FROM ai_ratelimit_status"), '0', 'no counter came from it');
$node->stop;

done_testing();

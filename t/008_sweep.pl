# Abandoned requests and a full table: the background worker frees expired
# reservations within seconds, without waiting for their user; views and
# ai_ratelimit_capacity() never count them as open; an entry held only by
# expired reservations can be reclaimed; a new user meeting a full table
# reclaims a bounded slice of it, not the whole table.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('sweep');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.max_keys = 100
ai_ratelimit.max_reservations = 16
ai_ratelimit.reservation_ttl = 2
ai_ratelimit.timezone = 'Etc/GMT+12'
});
$node->start;

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql(q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans VALUES ('metered', NULL, '1 minute', NULL, 1000);
});

# 16 abandoned requests: checked with an estimate, never recorded
is(sql(q{SELECT count(*) FILTER (WHERE c.allowed AND c.reservation_id IS NOT NULL)
	FROM generate_series(1, 16) g, LATERAL ai_check_limit('gone' || g, 'metered', 5) c}),
	'16', '16 abandoned requests hold the 16 reservations');
is(sql("SELECT open_reservations FROM ai_ratelimit_capacity()"), '16', 'all 16 are open');
my ($ret, $out, $err) = $node->psql('postgres', "SELECT * FROM ai_check_limit('new1', 'metered', 5)");
like($err, qr/cannot hold another reservation: all 16 are in use/, 'a 17th estimate finds the pool full');

# nobody checks again: the worker frees them within seconds of expiry
$node->poll_query_until('postgres',
	"SELECT open_reservations = 0 FROM ai_ratelimit_capacity()")
  or die "expired reservations are still counted as open";
pass('expired reservations are not counted as open');
$node->poll_query_until('postgres', q{
	SELECT count(*) = 0 FROM ai_ratelimit_status WHERE open_reservations > 0 OR reserved_cents > 0})
  or die "the view still shows expired reservations";
pass('ai_ratelimit_status shows no expired reservation');
# the first new request gets a reservation as soon as the worker has freed
# the expired ones (it sweeps every second)
$node->poll_query_until('postgres',
	"SELECT allowed AND reservation_id IS NOT NULL FROM ai_check_limit('new0', 'metered', 5)")
  or die "the worker did not give the pool back";
is(sql(q{SELECT count(*) FILTER (WHERE c.allowed AND c.reservation_id IS NOT NULL)
	FROM generate_series(1, 15) g, LATERAL ai_check_limit('new' || g, 'metered', 5) c}),
	'15', 'the worker gave the whole pool back: 16 new requests got reservations, and no old user checked again');
is(sql("SELECT count(*) FROM ai_ratelimit_verify()"), '0', 'the pool is consistent');
is(sql("SELECT sum(reserved_cents) FROM ai_ratelimit_status WHERE user_id LIKE 'gone%'"), '0',
	'the abandoned users hold nothing');

# entries held only by expired reservations and yesterday's counts are
# reclaimable: move the local day on, let the reservations expire, and
# fill the table with other users
sql("ALTER SYSTEM SET ai_ratelimit.timezone = 'Etc/GMT-14'");
sql("SELECT pg_reload_conf()");
$node->poll_query_until('postgres', "SELECT current_setting('ai_ratelimit.timezone') = 'Etc/GMT-14'");
$node->poll_query_until('postgres', "SELECT open_reservations = 0 FROM ai_ratelimit_capacity()")
  or die "reservations did not expire";
is(sql(q{SELECT count(*) FILTER (WHERE c.allowed) FROM generate_series(1, 100) g,
	LATERAL ai_check_limit('fresh' || g, 'metered') c}), '100',
	'100 new users fit: the 32 entries held only by expired reservations were reclaimed');
is(sql("SELECT count(*) FROM ai_ratelimit_status WHERE user_id LIKE 'fresh%'"), '100',
	'all 100 new users are tracked');
is(sql("SELECT count(*) FROM ai_ratelimit_verify()"), '0', 'the shared state is consistent');
$node->stop;

# a larger full table: one new user reclaims a bounded slice, not all of it
my $big = PostgreSQL::Test::Cluster->new('sweep_big');
$big->init;
$big->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'ai_ratelimit'
ai_ratelimit.max_keys = 40000
ai_ratelimit.timezone = 'Etc/GMT+12'
});
$big->start;
$big->safe_psql('postgres', q{
CREATE EXTENSION ai_ratelimit;
INSERT INTO ai_plans VALUES ('short', 1000, '1 second', 1000, NULL);
});
is($big->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE c.allowed)
	FROM generate_series(1, 40000) g, LATERAL ai_check_limit('u' || g, 'short') c}),
	'40000', '40,000 users fill the table');
$big->safe_psql('postgres', "ALTER SYSTEM SET ai_ratelimit.timezone = 'Etc/GMT-14'");
$big->safe_psql('postgres', "SELECT pg_reload_conf()");
$big->poll_query_until('postgres', "SELECT current_setting('ai_ratelimit.timezone') = 'Etc/GMT-14'");
sleep(2);
# every entry is dead now (yesterday's count, bursts passed).  The worker
# sweeps one partition's worth a second while the table is 90% full, and the
# new user's check sweeps a slice when it is full: either way, a slice of
# about 1/128 of the table at a time, never the whole table at once
is($big->safe_psql('postgres', "SELECT allowed FROM ai_check_limit('newcomer', 'short')"), 't',
	'a new user fits once dead entries are reclaimed');
my $freed = $big->safe_psql('postgres', "SELECT reclaimed FROM ai_ratelimit_capacity()");
cmp_ok($freed, '>=', 1, "dead entries were reclaimed ($freed)");
cmp_ok($freed, '<', 40000 / 4, 'in slices: far from the whole table');
is($big->safe_psql('postgres', "SELECT count(*) FROM ai_ratelimit_verify()"), '0',
	'the shared state is consistent');
$big->stop;
done_testing();

#!/usr/bin/env bash
# The Debian package test, as root: builds postgresql-17-ai-ratelimit with
# pg_buildext (debian/) in the PostgreSQL 17 root, installs the .deb into a
# clean copy of that root with apt-get, preloads it in a new cluster, and
# runs CREATE EXTENSION and a check.  Run by scripts/test.sh (--all or
# --package).
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/pgroot.sh"

MAJOR=17
DEBS=$(mktemp -d /tmp/ai_ratelimit-debs.XXXXXX)
trap 'root_cleanup; rm -rf "$DEBS"' EXIT

fail() { echo "package test: $*" >&2; exit 1; }

# 1. build the package in the root, out of tree, the way Debian does
root_prepare $MAJOR
root_copy_tree "$ROOT"
log "building the Debian package in the PostgreSQL $MAJOR root"
root_chroot "$ROOT" bash -euc '
	cd /build/ai_ratelimit
	pg_buildext updatecontrol
	dpkg-buildpackage -us -uc -b >/build/dpkg-buildpackage.log 2>&1 ||
		{ tail -n 60 /build/dpkg-buildpackage.log; exit 1; }
	grep -i "warning" /build/dpkg-buildpackage.log | grep -v "dpkg-\|debhelper\|dh_" || true
'
cp "$ROOT"/build/postgresql-$MAJOR-ai-ratelimit_*.deb "$DEBS"/ ||
	fail "no postgresql-$MAJOR-ai-ratelimit package was built"
ls -l "$DEBS"
root_cleanup

# 2. install it into a clean copy of the root, and use it
root_prepare $MAJOR
[ ! -e "$ROOT/usr/lib/postgresql/$MAJOR/lib/ai_ratelimit.so" ] ||
	fail "the clean root already has ai_ratelimit installed"
mkdir -p "$ROOT/tmp/debs"
cp "$DEBS"/*.deb "$ROOT/tmp/debs/"
log "installing the package with apt-get in a clean PostgreSQL $MAJOR root"
root_chroot "$ROOT" bash -euc "
	cd /tmp/debs
	apt-get install -y -qq --no-install-recommends ./postgresql-$MAJOR-ai-ratelimit_*.deb >/dev/null
	dpkg -L postgresql-$MAJOR-ai-ratelimit | grep -E 'ai_ratelimit(\.so|\.control|--1\.2--1\.3\.sql)\$'
"
log "preloading it in a new cluster: CREATE EXTENSION and a check"
OUT=$(root_chroot "$ROOT" su postgres -s /bin/bash -c "
	set -eu
	PGB=/usr/lib/postgresql/$MAJOR/bin
	D=\$(mktemp -d /tmp/pkgtest.XXXXXX)
	\$PGB/initdb -D \$D/data -A trust >/dev/null
	cat >> \$D/data/postgresql.conf <<CONF
shared_preload_libraries = 'ai_ratelimit'
listen_addresses = ''
unix_socket_directories = '\$D'
port = 54361
CONF
	\$PGB/pg_ctl -D \$D/data -l \$D/log -w start >/dev/null
	trap '\$PGB/pg_ctl -D \$D/data -m fast stop >/dev/null' EXIT
	psql() { \$PGB/psql -X -At -v ON_ERROR_STOP=1 -h \$D -p 54361 -d postgres \"\$@\"; }
	psql -c 'CREATE EXTENSION ai_ratelimit' >/dev/null
	echo \"version=\$(psql -c \"SELECT extversion FROM pg_extension WHERE extname = 'ai_ratelimit'\")\"
	echo \"server=\$(psql -c 'SHOW server_version_num')\"
	psql -c \"SELECT 'check=' || allowed || ',' || remaining FROM ai_check_limit('pkg-user', 'free')\"
	psql -c \"SELECT 'cost=' || ai_record_usage('pkg-user', 'gpt-4o', 1000, 1000)\"
	psql -c \"SELECT 'spend=' || ai_monthly_spend('pkg-user')\"
") || fail "the installed package did not work"
echo "$OUT"
# the version the control file of this tree installs
WANT=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$REPO/ai_ratelimit.control")
echo "$OUT" | grep -qx "version=$WANT" || fail "extension version is not $WANT"
echo "$OUT" | grep -q "^server=${MAJOR}0" || fail "the server is not PostgreSQL $MAJOR"
echo "$OUT" | grep -qx 'check=true,19' || fail "the first check of a free user did not answer allowed with 19 of 20 left"
echo "$OUT" | grep -qx 'cost=1.25' || fail "the recorded call did not cost 1.25 cents"
echo "$OUT" | grep -qx 'spend=1.25' || fail "the month's spend is not 1.25 cents"
log "the Debian package builds, installs with apt-get, and works"

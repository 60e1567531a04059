#!/usr/bin/env bash
# The whole test suite of ai_ratelimit on a fresh Debian 12 machine, as root.
#
#   bash scripts/test.sh            every supported PostgreSQL: 15, 17 and 18,
#                                   and the Debian package (same as --all)
#   bash scripts/test.sh --pg 17    one PostgreSQL major only
#   bash scripts/test.sh --package  only the Debian package test (in the 17 root)
#
# For each major: installs the packages, builds with -Werror, installs, and
# runs `make installcheck` (regression, isolation and TAP tests, each on its
# own temporary server with the extension preloaded; the TAP tests include
# the node-postgres client test, and the psycopg 3 one, directly and through
# PgBouncer) as the postgres user.  PostgreSQL 15 runs on this machine; 17
# and 18 run in Debian roots (scripts/pgroot.sh), prepared once and cached
# under /var/tmp.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/pgroot.sh"

ALL_MAJORS="15 17 18"

usage() {
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

majors=
package=no
while [ $# -gt 0 ]; do
	case $1 in
	--all) majors=$ALL_MAJORS; package=yes ;;
	--pg) [ $# -ge 2 ] || usage; majors="$majors $2"; shift ;;
	--package) package=yes ;;
	-h | --help) usage ;;
	*) echo "unknown argument: $1" >&2; usage ;;
	esac
	shift
done
if [ -z "$majors" ] && [ $package = no ]; then
	# no argument: the whole suite
	majors=$ALL_MAJORS
	package=yes
fi
for m in $majors; do
	case " $ALL_MAJORS " in
	*" $m "*) ;;
	*) echo "PostgreSQL $m is not supported here (supported: $ALL_MAJORS)" >&2; exit 2 ;;
	esac
done

# The suite for one major, on this machine (the host's major, or inside a
# prepared root).
run_here() {
	use_pg "$1"
	# psycopg 3 (and its pool) and PgBouncer for the second client test
	# (t/012); FastAPI, uvicorn and venv for the apps test (t/028)
	install_deps python3-psycopg python3-psycopg-pool pgbouncer python3-fastapi python3-uvicorn \
		python3-venv
	# pg_cron for the README's recipe (t/013), Patroni and etcd for the
	# high-availability test (t/022), Debian's prometheus-postgres-exporter
	# for the metrics test (t/026); the roots have them already.  A test
	# whose tool is missing fails.
	in_prepared_root ||
		apt-get install -y -qq --no-install-recommends postgresql-$PG_MAJOR-cron \
			patroni python3-etcd etcd-server etcd-client prometheus-postgres-exporter >/dev/null
	# node and npm for the node-postgres client test (test/client)
	command -v node >/dev/null && command -v npm >/dev/null ||
		apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
	build_install
	postgres_workdir
	trap 'rm -rf "$WORK"' EXIT

	log "installing the client tests' npm packages (pg, express)"
	as_postgres "cd '$WORK/test/client' && npm ci --no-audit --no-fund --loglevel=error"
	as_postgres "cd '$WORK/test/apps' && npm ci --no-audit --no-fund --loglevel=error"

	log "running the tests on PostgreSQL $PG_MAJOR as postgres in $WORK"
	local status=0
	as_postgres "cd '$WORK' && make -s PG_CONFIG=$PG_BIN/pg_config installcheck" || status=$?
	if [ $status -ne 0 ]; then
		for f in "$WORK"/regression.diffs "$WORK"/output_iso/regression.diffs; do
			[ -f "$f" ] && { log "$f"; cat "$f"; }
		done
		for f in "$WORK"/tmp_check/log/regress_log_*; do
			[ -f "$f" ] && { log "$f (last 60 lines)"; tail -n 60 "$f"; }
		done
		# kept for a developer: the actual outputs and the TAP logs
		rm -rf /tmp/ai_ratelimit-failed && mkdir -p /tmp/ai_ratelimit-failed
		cp -r "$WORK"/results "$WORK"/tmp_check/log /tmp/ai_ratelimit-failed/ 2>/dev/null || true
		log "outputs and logs kept in /tmp/ai_ratelimit-failed"
		log "tests failed on PostgreSQL $PG_MAJOR"
		return $status
	fi
	log "all tests passed on PostgreSQL $PG_MAJOR"
}

# The suite for one major in its Debian root: the tree is copied in and this
# script runs there with --pg.
run_in_root() {
	local major=$1
	trap root_cleanup EXIT
	root_prepare "$major"
	root_copy_tree "$ROOT"
	log "running the suite for PostgreSQL $major in $ROOT"
	root_chroot "$ROOT" bash /build/ai_ratelimit/scripts/test.sh --pg "$major"
}

run_major() {
	if [ "$1" = "$HOST_PG_MAJOR" ] || in_prepared_root; then
		(run_here "$1")
	else
		(run_in_root "$1")
	fi
}

if in_prepared_root; then
	for m in $majors; do run_here "$m"; done
	exit 0
fi

install_deps debootstrap
# Roots not cached yet are prepared first, side by side (mostly downloads),
# so that no suite runs while packages unpack.
need_roots=
for m in $majors; do
	if [ "$m" != "$HOST_PG_MAJOR" ]; then need_roots="$need_roots $m"; fi
done
if [ $package = yes ]; then need_roots="$need_roots 17"; fi
pids=
for m in $(echo $need_roots | tr ' ' '\n' | sort -u); do
	if ! root_is_cached "$m"; then
		log "preparing the PostgreSQL $m root (about 7 minutes; log: $ROOTS_DIR/prepare-$m.log)"
		mkdir -p "$ROOTS_DIR"
		(root_cache "$m") >"$ROOTS_DIR/prepare-$m.log" 2>&1 &
		pids="$pids $!:$m"
	fi
done
for p in $pids; do
	wait "${p%%:*}" || { cat "$ROOTS_DIR/prepare-${p##*:}.log"; log "could not prepare the PostgreSQL ${p##*:} root"; exit 1; }
done

passed=0
failed=0
failed_names=
for m in $majors; do
	if run_major "$m"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failed_names="$failed_names PostgreSQL-$m"
	fi
done
if [ $package = yes ]; then
	if bash "$REPO/scripts/test-package.sh"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		failed_names="$failed_names debian-package"
	fi
fi

what=${majors:+PostgreSQL $(echo $majors)}
[ $package = yes ] && what="${what:+$what and }the Debian package"
log "suites run: $what"
[ $failed -eq 0 ] || log "failed:$failed_names"
echo "suites: $passed passed, $failed failed"
[ $failed -eq 0 ]

# Shared by scripts/demo.sh, scripts/test.sh and bench/run: install what
# ai_ratelimit needs on Debian, build it, and run things as the postgres
# user (PostgreSQL refuses to run as root).

set -euo pipefail

# Debian 12 ships PostgreSQL 15: it runs on this machine.  17 and 18 run in
# Debian roots (scripts/pgroot.sh), where this same file is used with
# PG_MAJOR set to theirs.
HOST_PG_MAJOR=15
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

use_pg() {
	PG_MAJOR=$1
	PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
}
use_pg "${PG_MAJOR:-$HOST_PG_MAJOR}"

log() { printf '\n==> %s\n' "$*"; }

# Inside a root prepared by scripts/pgroot.sh, whose packages are in place.
in_prepared_root() { [ -f /etc/ai_ratelimit-root ]; }

# Debian packages: the server, its build files, the TAP test modules.
install_deps() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "run this as root: it installs Debian packages and runs PostgreSQL as the postgres user" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	if in_prepared_root; then
		# the root was prepared with these; say so if one went missing
		dpkg-query -W postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libipc-run-perl rsync "$@" >/dev/null
		return
	fi
	log "installing Debian packages"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends \
		postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib \
		build-essential libipc-run-perl ca-certificates rsync procps "$@" >/dev/null
	# the Debian package may start a cluster of its own; ours use private ports
	id postgres >/dev/null
}

# Build with warnings as errors (our builds only: a user's `make` does not
# set WERROR) and install into the Debian PostgreSQL.
# Build in a temporary copy of the tree (the work tree keeps no build
# outputs and is never cleaned) and install into $PG_BIN's PostgreSQL.
# Arguments are extra make variables (memcheck's sanitizer flags).
build_install() {
	log "building ai_ratelimit for PostgreSQL $PG_MAJOR"
	local build
	build=$(mktemp -d /tmp/ai_ratelimit-build.XXXXXX)
	rsync -a --exclude .git --exclude node_modules --exclude '*.o' --exclude '*.so' \
		--exclude '*.bc' "$REPO"/ "$build"/
	make -C "$build" -s PG_CONFIG=$PG_BIN/pg_config WERROR=-Werror "$@" &&
		make -C "$build" -s PG_CONFIG=$PG_BIN/pg_config "$@" install >/dev/null ||
		{ rm -rf "$build"; return 1; }
	rm -rf "$build"
}

# A copy of the work tree that the postgres user owns, in $WORK.
postgres_workdir() {
	WORK=$(mktemp -d /tmp/ai_ratelimit.XXXXXX)
	rsync -a --exclude .git --exclude node_modules "$REPO"/ "$WORK"/
	chown -R postgres:postgres "$WORK"
}

as_postgres() {
	su postgres -s /bin/bash -c "$*"
}

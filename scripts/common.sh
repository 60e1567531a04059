# Shared by scripts/demo.sh, scripts/test.sh and bench/run: install what
# ai_ratelimit needs on Debian 12, build it, and run things as the postgres
# user (PostgreSQL refuses to run as root).

set -euo pipefail

PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '\n==> %s\n' "$*"; }

# Debian packages: the server, its build files, the TAP test modules.
install_deps() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "run this as root: it installs Debian packages and runs PostgreSQL as the postgres user" >&2
		exit 1
	fi
	log "installing Debian packages"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends \
		postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib \
		build-essential libipc-run-perl ca-certificates rsync procps "$@" >/dev/null
	# the Debian package may start a cluster of its own; ours use private ports
	id postgres >/dev/null
}

# Build (warnings are errors) and install into the Debian PostgreSQL.
build_install() {
	log "building ai_ratelimit"
	make -C "$REPO" -s clean >/dev/null
	make -C "$REPO" -s PG_CONFIG=$PG_BIN/pg_config
	make -C "$REPO" -s PG_CONFIG=$PG_BIN/pg_config install >/dev/null
	make -C "$REPO" -s clean >/dev/null
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

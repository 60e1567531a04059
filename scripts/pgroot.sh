# Debian roots for the PostgreSQL majors that Debian 12 does not ship.
#
# Sourced by scripts/test.sh (after common.sh).  PostgreSQL 17 comes from
# Debian trixie and 18 from Debian sid; neither is ever installed onto this
# machine: each lives in a `debootstrap --variant=minbase` root under
# $ROOTS_DIR, with the build and test packages installed once, and the
# prepared root kept as a tarball so that the next run unpacks it in seconds.
# The mirror is the one this machine's apt already uses.

ROOTS_DIR=${AI_RATELIMIT_ROOTS:-/var/tmp/ai_ratelimit-roots}

# What a root needs to build, test and package ai_ratelimit.  Changing this
# list changes the tarball's name, so a stale root is never reused.
root_packages() {
	local major=$1
	echo postgresql-$major postgresql-server-dev-$major postgresql-contrib \
		postgresql-server-dev-all build-essential debhelper dpkg-dev fakeroot \
		libipc-run-perl ca-certificates rsync procps nodejs npm \
		pgbouncer python3-psycopg python3-psycopg-pool python3-fastapi python3-uvicorn python3-venv \
		locales-all postgresql-$major-cron \
		patroni python3-etcd etcd-server etcd-client prometheus-postgres-exporter
}

root_suite() {
	case $1 in
	17) echo trixie ;;
	18) echo sid ;;
	*) echo "no Debian root is defined for PostgreSQL $1 (15 runs on this machine, 17 and 18 in roots)" >&2; return 1 ;;
	esac
}

# The first Debian archive URI in this machine's apt sources (one-line or
# deb822 format), never the security archive.
host_mirror() {
	local uri
	uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
		awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:\/\//) { print $i; break } }' |
		grep -v -- '-security' | grep '/debian/*$' | head -n 1 || true)
	if [ -z "$uri" ]; then
		uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
			awk '$1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }' |
			grep -v -- '-security' | grep '/debian/*$' | head -n 1 || true)
	fi
	if [ -z "$uri" ]; then
		echo "cannot find a Debian mirror in /etc/apt/sources.list*" >&2
		return 1
	fi
	echo "${uri%/}"
}

# Mount what a root needs, in order; root_umount undoes it, safe to repeat.
# /dev is bound privately so that the tmpfs on its shm never propagates back
# to this machine's /dev/shm.
root_mount() {
	local root=$1
	mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
	mountpoint -q "$root/sys" || { mount --bind /sys "$root/sys" && mount --make-rslave "$root/sys"; }
	if ! mountpoint -q "$root/dev"; then
		mount --bind /dev "$root/dev"
		mount --make-private "$root/dev"
	fi
	mountpoint -q "$root/dev/shm" || mount -t tmpfs -o mode=1777,size=2g shm "$root/dev/shm"
	mountpoint -q "$root/dev/pts" || mount -t devpts -o newinstance,ptmxmode=0666 devpts "$root/dev/pts" 2>/dev/null || true
}

root_umount() {
	local root=$1 m
	[ -n "$root" ] && [ -d "$root" ] || return 0
	for m in dev/pts dev/shm dev sys proc; do
		if mountpoint -q "$root/$m"; then
			umount "$root/$m" 2>/dev/null || umount -l "$root/$m" || true
		fi
	done
}

# What this machine lends a root: name resolution, its extra CA certificates
# and its npm settings, so package clients work as they do outside.
root_copy_host_settings() {
	local root=$1
	cp -L /etc/resolv.conf "$root/etc/resolv.conf"
	if [ -d /usr/local/share/ca-certificates ]; then
		mkdir -p "$root/usr/local/share/ca-certificates"
		cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
	fi
	[ -f /etc/npmrc ] && cp /etc/npmrc "$root/etc/npmrc"
	if [ -x "$root/usr/sbin/update-ca-certificates" ]; then
		chroot "$root" update-ca-certificates >/dev/null 2>&1 || true
	fi
}

root_chroot() {
	local root=$1
	shift
	chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		DEBIAN_FRONTEND=noninteractive CI="${CI:-}" \
		NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt "$@"
}

# Build a root from nothing into $2 (about 6 to 7 minutes).
root_bootstrap() {
	local major=$1 root=$2 suite mirror
	suite=$(root_suite "$major")
	mirror=$(host_mirror)
	command -v debootstrap >/dev/null ||
		apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
	log "debootstrap $suite (PostgreSQL $major) into $root"
	debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.debootstrap.log" 2>&1 || {
		tail -n 30 "$root.debootstrap.log" >&2
		[ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
		return 1
	}
	rm -f "$root.debootstrap.log"
	echo "deb $mirror $suite main" >"$root/etc/apt/sources.list"
	if [ "$suite" = sid ]; then
		# sid's Release file may be past its Valid-Until date: tolerated
		# for sid only.
		echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99ai-ratelimit-sid"
	fi
	# Debian's packages must not start servers inside the root.
	printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
	chmod +x "$root/usr/sbin/policy-rc.d"
	root_mount "$root"
	root_copy_host_settings "$root"
	log "installing PostgreSQL $major and the build and test packages in the root"
	root_chroot "$root" apt-get update -qq
	# shellcheck disable=SC2046
	root_chroot "$root" apt-get install -y -qq --no-install-recommends $(root_packages "$major") >/dev/null
	root_copy_host_settings "$root"
	root_chroot "$root" apt-get clean
	echo "$(root_packages "$major")" >"$root/etc/ai_ratelimit-root"
	root_umount "$root"
}

root_tarball() {
	local major=$1 key
	key=$(root_packages "$major" | md5sum | cut -c1-8)
	echo "$ROOTS_DIR/pg$major-$(root_suite "$major")-$key.tar"
}

root_is_cached() { [ -f "$(root_tarball "$1")" ]; }

# Remove a root directory, never what is mounted in it: everything must be
# unmounted first, and rm stays on the root's own file system.
root_remove() {
	local dir=$1
	[ -d "$dir" ] || return 0
	root_umount "$dir"
	if awk -v d="$dir/" 'index($2 "/", d) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
		echo "not removing $dir: something is still mounted in it" >&2
		return 1
	fi
	rm -rf --one-file-system "$dir"
}

# Bootstrap the root of PostgreSQL $1 and cache it as a tarball, unless it
# is cached already.
root_cache() {
	local major=$1 tarball tmp old
	tarball=$(root_tarball "$major")
	[ -f "$tarball" ] && return 0
	mkdir -p "$ROOTS_DIR"
	tmp=$ROOTS_DIR/pg$major.new
	ROOT_CLEANUP=$tmp
	trap root_cleanup EXIT
	root_remove "$tmp"
	mkdir -p "$tmp"
	root_bootstrap "$major" "$tmp"
	log "caching the prepared root as $tarball"
	tar -C "$tmp" -cf "$tarball.part" .
	mv "$tarball.part" "$tarball"
	# roots of this major prepared from an older package list are stale
	for old in "$ROOTS_DIR"/pg"$major"-*.tar; do
		[ "$old" = "$tarball" ] || rm -f "$old"
	done
	root_remove "$tmp"
	ROOT_CLEANUP=
}

# Make $ROOT a fresh, mounted root for PostgreSQL $1, unpacked from its
# tarball (made first if need be).  Sets ROOT; root_cleanup undoes it.
root_prepare() {
	local major=$1 tarball
	root_cache "$major"
	tarball=$(root_tarball "$major")
	ROOT=$ROOTS_DIR/pg$major
	root_remove "$ROOT"
	log "unpacking the PostgreSQL $major root from $tarball"
	mkdir -p "$ROOT"
	ROOT_CLEANUP=$ROOT
	tar -C "$ROOT" -xf "$tarball"
	root_mount "$ROOT"
	root_copy_host_settings "$ROOT"
}

# Copy the work tree into the root, at /build/ai_ratelimit.
root_copy_tree() {
	local root=$1
	mkdir -p "$root/build"
	rsync -a --delete --exclude .git --exclude node_modules "$REPO"/ "$root/build/ai_ratelimit"/
}

# For an EXIT trap: unmount and remove whatever root this process made.
root_cleanup() {
	if [ -n "${ROOT_CLEANUP:-}" ]; then
		root_remove "$ROOT_CLEANUP" || root_umount "$ROOT_CLEANUP"
	fi
	return 0
}

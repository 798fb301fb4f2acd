#!/bin/sh
# Builds the PostgreSQL 15 image of the live drills' docker backend offline:
# no image registry is needed, only a Debian mirror (the one apt uses here).
#
#   scripts/build-pg-image.sh          # prints the tag, builds it if missing
#
# The tag is agentdrill/postgres:15-<first 12 hex of this script's sha256>,
# so changing this script makes a new image and an unchanged one is reused.
# src/live/pg/docker.rs computes the same tag (image_tag()).
#
# The image: Debian bookworm (debootstrap, minbase) with postgresql-15, the
# server programs on PATH, a `postgres` user with the fixed uid/gid 70 (the
# harness hands the bind-mounted node folder to that uid), no default
# cluster. Needs root (debootstrap) and a Docker daemon.
set -eu

UID_GID=70
SCRIPT=$(readlink -f "$0")
HASH=$(sha256sum "$SCRIPT" | cut -c1-12)
TAG="agentdrill/postgres:15-$HASH"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "build-pg-image: installing debootstrap" >&2
    apt-get update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >&2
fi

# The mirror apt uses here (deb822 sources first, then sources.list).
MIRROR=$(sed -n 's/^URIs: *\([^ ]*debian\/*\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)
if [ -z "$MIRROR" ]; then
    MIRROR=$(sed -n 's/^deb  *\(\[[^]]*\]  *\)\{0,1\}\([^ ]*\)  *bookworm .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -n1)
fi
MIRROR=${MIRROR:-http://deb.debian.org/debian}
echo "build-pg-image: building $TAG from $MIRROR" >&2

ROOT=$(mktemp -d /tmp/agentdrill-pg-image.XXXXXX)
cleanup() {
    for m in proc sys dev/pts dev; do umount "$ROOT/$m" 2>/dev/null || true; done
    rm -rf "$ROOT"
}
trap cleanup EXIT

debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >&2
# The user first, with fixed ids; postgresql-common then keeps it.
chroot "$ROOT" groupadd --system --gid "$UID_GID" postgres
chroot "$ROOT" useradd --system --uid "$UID_GID" --gid "$UID_GID" --home-dir /var/lib/postgresql --shell /bin/sh postgres
# No default cluster, no service start inside the chroot.
mkdir -p "$ROOT/etc/postgresql-common/createcluster.d"
echo "create_main_cluster = false" >"$ROOT/etc/postgresql-common/createcluster.d/agentdrill.conf"
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod +x "$ROOT/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOT/proc"
chroot "$ROOT" apt-get install -y --no-install-recommends postgresql-15 >&2
umount "$ROOT/proc"
chroot "$ROOT" apt-get clean
rm -rf "$ROOT/var/lib/apt/lists"/* "$ROOT/usr/share/doc"/* "$ROOT/usr/share/man"/*
test -x "$ROOT/usr/lib/postgresql/15/bin/postgres"

tar -C "$ROOT" -c . | docker import \
    --change 'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "USER $UID_GID:$UID_GID" \
    --change 'LABEL agentdrill.image=postgres-15' \
    - "$TAG" >&2
echo "$TAG"

#!/usr/bin/env bash
# The container image the tests run in, built once and cached in podman's storage:
# a minimal Debian (debootstrap, from Debian's mirror: the only network the test machines
# have is the package registries) with python3, imported as localhost/muster-test-base:2.
# Prints the variables the tests need: CONTAINERS_CONF and MUSTER_TEST_IMAGE.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=localhost/muster-test-base:2
mkdir -p var/containers
CONF=$PWD/var/containers/containers.conf
cat > "$CONF" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF=$CONF
if ! podman image exists "$IMAGE" 2>/dev/null; then
    root=$(mktemp -d /tmp/muster-rootfs.XXXXXX)
    echo "building $IMAGE (debootstrap, once)" >&2
    # The mirror apt already uses (the test machines reach only the package registries).
    mirror=$(sed -n 's/^URIs: *\(\S*\/debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n 1)
    suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-bookworm}")
    debootstrap --variant=minbase --include=python3 "${suite:-bookworm}" "$root" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    tar -C "$root" -c . | podman import - "$IMAGE" >/dev/null
    rm -rf "$root"
fi
echo "CONTAINERS_CONF=$CONF"
echo "MUSTER_TEST_IMAGE=$IMAGE"

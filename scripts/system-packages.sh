#!/usr/bin/env bash
# Install the system packages Muster needs, when they are missing:
#   scripts/system-packages.sh run    what `make run` needs: git (experiments from a repository)
#   scripts/system-packages.sh test   what the whole test suite needs besides (`make test`)
# Another apt holding its lock is waited for (up to APT_LOCK_WAIT_S, default 300 s), not a failure.
set -euo pipefail
mode=${1:-test}
need=()
command -v git >/dev/null || need+=(git)
if [ "$mode" = test ]; then
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
    command -v redis-server >/dev/null || need+=(redis-server)
    command -v openssl >/dev/null || need+=(openssl)
    # Container runs are tested for real with podman (runc), on an image made with debootstrap.
    command -v podman >/dev/null || need+=(podman)
    command -v runc >/dev/null || need+=(runc)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    # Page tests drive Debian's chromium through Playwright (playwright cannot download browsers here).
    [ -x /usr/bin/chromium ] || need+=(chromium)
elif [ "$mode" != run ]; then
    echo "usage: $0 run|test" >&2
    exit 2
fi
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing system packages: ${need[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
wait_s=${APT_LOCK_WAIT_S:-300}
$SUDO apt-get -o DPkg::Lock::Timeout="$wait_s" update -qq
$SUDO apt-get -o DPkg::Lock::Timeout="$wait_s" install -y -qq --no-install-recommends "${need[@]}"

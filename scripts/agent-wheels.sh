#!/usr/bin/env bash
# The agent's dependencies as wheels for the machines an autoscaler starts (Linux x86_64 and
# aarch64, Python 3.10 to 3.13), into AGENT_WHEELS_DIR (default var/agent-wheels), which the
# server serves at /agent/wheels/ beside the agent's own wheel: the machines then need no package
# registry. Run it once on a host that reaches PyPI (the server's, or copy the folder over).
set -euo pipefail
# pip, which downloads wheels for platforms other than this one (uv has no download command).
cd "$(dirname "$0")/.."
dest=${AGENT_WHEELS_DIR:-var/agent-wheels}
mkdir -p "$dest"
for platform in manylinux2014_x86_64 manylinux2014_aarch64; do
    for python in 3.10 3.11 3.12 3.13; do
        python3 -m pip download --quiet --only-binary=:all: --platform "$platform" \
            --python-version "$python" --dest "$dest" "psutil>=5.9" "uv>=0.5" "nvidia-ml-py>=12.535"
    done
done
ls "$dest"

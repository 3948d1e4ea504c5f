#!/usr/bin/env bash
# Install unmodified clearml-agent releases, each in its own virtual environment under var/,
# once (the ClearML compatibility tests run them offline afterwards). Prints nothing when present.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=$(command -v uv || echo .tools/bin/uv)
PY=$(scripts/find-python)
for version in 3.0.3 1.9.2; do
    dir=var/clearml-agent-$version
    [ -x "$dir/bin/clearml-agent" ] && continue
    echo "installing clearml-agent $version into $dir"
    rm -rf "$dir"
    $UV venv -q -p "$PY" "$dir"
    extra=()
    # 1.9.2 imports pkg_resources, which setuptools 81 removed.
    [ "$version" = 1.9.2 ] && extra=("setuptools<81")
    $UV pip install -q --python "$dir/bin/python" "clearml-agent==$version" "${extra[@]}"
done

"""Print what the agent would report about this machine's GPUs, read through real NVML.

For a machine with a GPU (and for the device check of the workers issue): needs only the
agent package, psutil and nvidia-ml-py, no server.

    python scripts/gpu-check.py [--seconds 3] [--gpus 0,1]

Exits 1 when NVML finds no GPU (so a check on a GPU machine that sees none fails loudly).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from muster_agent.monitor import Gpus, Sampler, load_nvml


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--gpus", help="indices, e.g. 0,1 (default: every GPU)")
    args = parser.parse_args()
    indices = [int(i) for i in args.gpus.split(",")] if args.gpus else None
    gpus = Gpus(load_nvml(), indices)
    print(json.dumps({"inventory": gpus.inventory}, indent=2))
    if not gpus.enabled:
        print("no GPU found through NVML", file=sys.stderr)
        return 1
    sampler = Sampler(gpus, disk_path="/", runs=dict)
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        sampler.sample_once()
        time.sleep(0.5)
    machine, _ = sampler.take()
    print(json.dumps({"machine": machine}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A stand-in for pynvml with two GPUs, for machines without one (MUSTER_AGENT_NVML=tests.fake_nvml).

Values move a little between calls, like a busy card. FAKE_NVML_FAIL_AFTER=N makes every
call after the N-th raise, to test that the agent switches GPU monitoring off.
"""

from __future__ import annotations

import itertools
import os
from types import SimpleNamespace
from typing import Any

NVML_TEMPERATURE_GPU = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
TOTAL = 80 * 2**30
_calls = itertools.count()


class NVMLError(Exception):
    pass


def _tick() -> int:
    n = next(_calls)
    limit = os.environ.get("FAKE_NVML_FAIL_AFTER")
    if limit is not None and n >= int(limit):
        raise NVMLError("GPU is lost")
    return n


def nvmlInit() -> None:  # noqa: N802 - NVML's names
    _tick()


def nvmlDeviceGetCount() -> int:  # noqa: N802
    return 2


def nvmlDeviceGetHandleByIndex(i: int) -> int:  # noqa: N802
    if not 0 <= i < 2:
        raise NVMLError("invalid index")
    return i


def nvmlDeviceGetName(h: int) -> bytes:  # noqa: N802
    return b"NVIDIA H100 80GB HBM3"


def nvmlDeviceGetMemoryInfo(h: int) -> Any:  # noqa: N802
    used = (10 + 20 * h) * 2**30
    return SimpleNamespace(total=TOTAL, used=used, free=TOTAL - used)


def nvmlDeviceGetUtilizationRates(h: int) -> Any:  # noqa: N802
    n = _tick()
    return SimpleNamespace(gpu=40 + 30 * h + n % 3, memory=20)


def nvmlDeviceGetTemperature(h: int, sensor: int) -> int:  # noqa: N802
    return 55 + h


def nvmlDeviceGetTotalEccErrors(h: int, error_type: int, counter: int) -> int:  # noqa: N802
    return h


def nvmlDeviceGetComputeRunningProcesses(h: int) -> list[Any]:  # noqa: N802
    return []

"""Machine and per-run resource use, sampled at 2 Hz and averaged over each report interval.

GPUs are read through NVML (nvidia-ml-py) when it loads and finds devices; only the GPUs
this agent was given are reported. Without NVML there are no GPU fields and no error;
after repeated NVML errors GPU monitoring switches itself off and says so once.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

log = logging.getLogger("muster.agent")
NVML_ERROR_LIMIT = 3


def load_nvml() -> Any | None:
    """The NVML module (MUSTER_AGENT_NVML names a stand-in for tests), or None."""
    name = os.environ.get("MUSTER_AGENT_NVML") or "pynvml"
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class Gpus:
    """The agent's GPUs through NVML: inventory and per-device samples."""

    def __init__(self, nvml: Any | None, indices: Iterable[int] | None = None):
        self.nvml = nvml
        self.errors = 0
        self.enabled = False
        self.handles: dict[int, Any] = {}
        self.inventory: list[dict[str, Any]] = []
        if nvml is None:
            return
        try:
            nvml.nvmlInit()
            count = nvml.nvmlDeviceGetCount()
        except Exception as e:  # NVML raises its own error types; no driver is a normal case
            log.info("no GPU monitoring: NVML did not start (%s)", e)
            return
        wanted = list(range(count)) if indices is None else [i for i in indices if 0 <= i < count]
        for i in wanted:
            try:
                h = nvml.nvmlDeviceGetHandleByIndex(i)
                name = nvml.nvmlDeviceGetName(h)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
            except Exception as e:
                log.warning("GPU %s is not readable through NVML: %s", i, e)
                continue
            self.handles[i] = h
            self.inventory.append(
                {
                    "index": i,
                    "model": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_mb": int(mem.total // 2**20),
                }
            )
        self.enabled = bool(self.handles)

    def sample(self) -> dict[int, dict[str, Any]]:
        nvml = self.nvml
        if not self.enabled or nvml is None:
            return {}
        out: dict[int, dict[str, Any]] = {}
        try:
            for i, h in self.handles.items():
                util = nvml.nvmlDeviceGetUtilizationRates(h)
                mem = nvml.nvmlDeviceGetMemoryInfo(h)
                temp = nvml.nvmlDeviceGetTemperature(h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
                ecc: int | None
                try:
                    ecc = int(
                        nvml.nvmlDeviceGetTotalEccErrors(
                            h,
                            getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                            getattr(nvml, "NVML_VOLATILE_ECC", 0),
                        )
                    )
                except Exception:  # ECC is not supported on every board
                    ecc = None
                pids: dict[int, float] = {}
                try:
                    for p in nvml.nvmlDeviceGetComputeRunningProcesses(h):
                        used = getattr(p, "usedGpuMemory", None)
                        pids[int(p.pid)] = float(used or 0) / 2**20
                except Exception:
                    pids = {}
                out[i] = {
                    "util": float(util.gpu),
                    "memory_used_mb": float(mem.used) / 2**20,
                    "memory_free_mb": float(mem.free) / 2**20,
                    "temperature_c": float(temp),
                    "ecc_errors": ecc,
                    "pids": pids,
                }
        except Exception as e:
            self.errors += 1
            if self.errors >= NVML_ERROR_LIMIT:
                self.enabled = False
                log.warning("GPU monitoring switched off after %s NVML errors in a row (last: %s)", self.errors, e)
            return {}
        self.errors = 0
        return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Sampler:
    """Collects 2 Hz samples; `take()` returns the averages since the last call."""

    def __init__(self, gpus: Gpus, *, disk_path: str, runs: Callable[[], dict[str, Any]], period: float = 0.5):
        self.gpus = gpus
        self.disk_path = disk_path
        self.runs = runs  # attempt id -> object with .pids() and .gpu_indices
        self.period = period
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self._reset()
        self._last_io = self._io()
        self._last_io_at = time.monotonic()
        self._procs: dict[int, psutil.Process] = {}
        psutil.cpu_percent(percpu=True)

    def _reset(self) -> None:
        self.cpu: list[float] = []
        self.cores: list[list[float]] = []
        self.mem_used: list[float] = []
        self.mem_free: list[float] = []
        self.gpu: dict[int, dict[str, list[float]]] = {}
        self.ecc: dict[int, int | None] = {}
        self.run_samples: dict[str, dict[str, list[float]]] = {}

    def _io(self) -> tuple[float, float, float, float]:
        net = psutil.net_io_counters()
        try:
            disk = psutil.disk_io_counters()
        except (RuntimeError, OSError):
            disk = None
        return (
            float(net.bytes_recv if net else 0),
            float(net.bytes_sent if net else 0),
            float(disk.read_bytes if disk else 0),
            float(disk.write_bytes if disk else 0),
        )

    def _proc(self, pid: int) -> psutil.Process | None:
        p = self._procs.get(pid)
        if p is None:
            try:
                p = psutil.Process(pid)
                p.cpu_percent()  # primes the counter; the first reading is always 0
            except psutil.Error:
                return None
            self._procs[pid] = p
        return p

    def sample_once(self) -> None:
        cores = psutil.cpu_percent(percpu=True)
        vm = psutil.virtual_memory()
        gpu = self.gpus.sample()
        runs = self.runs()
        per_run: dict[str, dict[str, float]] = {}
        seen: set[int] = set()
        for attempt_id, run in runs.items():
            cpu = mem = 0.0
            pids = run.pids()
            for pid in pids:
                p = self._proc(pid)
                if p is None:
                    continue
                seen.add(pid)
                try:
                    cpu += p.cpu_percent()
                    mem += p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            g_util = [gpu[i]["util"] for i in run.gpu_indices if i in gpu]
            g_mem = sum(mb for i in run.gpu_indices if i in gpu for pid, mb in gpu[i]["pids"].items() if pid in pids)
            per_run[attempt_id] = {"cpu_percent": cpu, "memory_mb": mem}
            if g_util:
                per_run[attempt_id]["gpu_util"] = sum(g_util) / len(g_util)
                per_run[attempt_id]["gpu_memory_mb"] = g_mem
        for pid in list(self._procs):
            if pid not in seen:
                del self._procs[pid]
        with self.lock:
            if cores:
                self.cpu.append(sum(cores) / len(cores))
                self.cores.append(cores)
            self.mem_used.append((vm.total - vm.available) / 2**20)
            self.mem_free.append(vm.available / 2**20)
            for i, g in gpu.items():
                acc = self.gpu.setdefault(
                    i, {"util": [], "memory_used_mb": [], "memory_free_mb": [], "temperature_c": []}
                )
                for k in acc:
                    acc[k].append(g[k])
                self.ecc[i] = g["ecc_errors"]
            for attempt_id, values in per_run.items():
                acc_run = self.run_samples.setdefault(attempt_id, {})
                for k, v in values.items():
                    acc_run.setdefault(k, []).append(v)

    def take(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Machine stats and per-attempt stats averaged since the last take."""
        now = time.monotonic()
        io = self._io()
        span = max(now - self._last_io_at, 1e-3)
        rates = [max(0.0, (b - a) / span) for a, b in zip(self._last_io, io, strict=True)]
        self._last_io, self._last_io_at = io, now
        with self.lock:
            machine: dict[str, Any] = {
                "cpu_percent": _mean(self.cpu),
                "memory_used_mb": _mean(self.mem_used),
                "memory_free_mb": _mean(self.mem_free),
                "network_rx_bps": rates[0],
                "network_tx_bps": rates[1],
                "disk_read_bps": rates[2],
                "disk_write_bps": rates[3],
            }
            if self.cores:
                n = min(len(c) for c in self.cores)
                machine["cpu_per_core"] = [
                    min(100.0, sum(c[k] for c in self.cores) / len(self.cores)) for k in range(n)
                ]
            if self.gpu:
                machine["gpus"] = [
                    {"index": i, **{k: _mean(v) for k, v in acc.items()}, "ecc_errors": self.ecc.get(i)}
                    for i, acc in sorted(self.gpu.items())
                ]
            attempts = [
                {"attempt": a, **{k: _mean(v) for k, v in vals.items()}} for a, vals in self.run_samples.items()
            ]
            self._reset()
        try:
            machine["disk_free_mb"] = shutil.disk_usage(self.disk_path).free / 2**20
        except OSError:
            pass
        if machine["cpu_percent"] is not None:
            machine["cpu_percent"] = min(100.0, machine["cpu_percent"])
        return machine, attempts

    def loop(self) -> None:
        while not self.stop_event.wait(self.period):
            try:
                self.sample_once()
            except Exception:  # monitoring never takes the agent down
                log.exception("sampling failed")

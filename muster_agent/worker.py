"""The agent: registers, reports, long-polls for work, runs attempts on its GPU slots.

Threads: the main thread claims; `report` sends the heartbeat with machine and run stats
(independent of the children); `sender` delivers the spool; `ticker` watches processes,
flushes output and ends runs; `sampler` reads CPU, memory and GPUs at 2 Hz; the report
channel serves `muster.report()`. A server outage never stops a run: every call is
retried with backoff and the spool keeps what is not delivered yet.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from muster_agent import __version__, container
from muster_agent.cgroups import agent_base
from muster_agent.channel import Channel
from muster_agent.client import ApiError, Client, ServerAway
from muster_agent.isolation import IsolationError, can_reach, give_to, make_undumpable, run_user
from muster_agent.ledger import Ledger, end_processes
from muster_agent.monitor import Gpus, Sampler, load_nvml
from muster_agent.runner import SDK_DIR, Ending, Run, RunContext, reap_orphans, set_subreaper
from muster_agent.spool import Spool
from muster_agent.spot import SpotWatch

log = logging.getLogger("muster.agent")


@dataclass
class Options:
    name: str = field(default_factory=socket.gethostname)
    queues: list[str] = field(default_factory=lambda: ["default"])
    gpus: list[int] | None = None  # None: every GPU NVML finds
    cpu_only: bool = False
    order_fairness: bool = False
    report_interval: float = 5.0
    claim_wait: int = 30
    state_dir: Path = field(default_factory=lambda: Path.home() / ".local" / "state" / "muster-agent")
    quick_failure_s: float = 10.0
    quick_failures_to_drain: int = 5
    timeout_s: int = 0
    tags: list[str] = field(default_factory=list)
    keep_workdirs: bool = False
    find_links: str | None = None  # a local wheelhouse for building environments offline
    container_engine: str | None = None  # podman | docker
    default_image: str | None = None
    gpu_passthrough: str = "cdi"  # cdi (podman) | docker | none
    run_as: str | None = None  # the user runs execute as (muster_agent/isolation.py: run_user)
    work_dir: Path | None = None  # the runs' working folders; state_dir/work when None
    pass_env: list[str] = field(default_factory=list)  # more of the agent's variables runs get
    spot_notice: str | None = None  # aws | gcp: watch the metadata server for the cloud taking the machine back
    spot_metadata_url: str | None = None  # that metadata server (default: the cloud's own address)
    spot_poll_s: float = 5.0


class Backoff:
    def __init__(self, first: float = 0.5, most: float = 30.0):
        self.first, self.most, self.n = first, most, 0

    def next(self) -> float:
        delay = min(self.most, self.first * 2**self.n)
        self.n += 1
        return float(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self.n = 0


class Agent:
    def __init__(self, client: Client, options: Options):
        self.client = client
        self.opts = options
        self.name = options.name
        self.instance_id = uuid.uuid4().hex
        self.state = Path(options.state_dir)
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)  # the spool holds lease tokens: the agent's alone
        self.run_user = run_user(options.run_as)
        self.work_root, self.build_dir, self.sdk_dir = self._run_folders(options)
        self.spool = Spool(self.state / "spool")
        self.ledger = Ledger(self.state / "runs")
        self.cgroup_base = agent_base()
        self.runs: dict[str, Run] = {}
        # Claims received but not yet a Run (attempt id -> lease token): reported from the moment the
        # answer arrives, since the server fences a claim a report leaves out after it was made.
        self.claimed: dict[str, str] = {}
        self.runs_lock = threading.Lock()
        self.wake = threading.Event()
        self.server_back = threading.Event()
        self.stop_event = threading.Event()  # set when the agent exits
        self.signalled = threading.Event()  # SIGTERM or SIGINT: every wait returns at once
        self.sender_away = threading.Event()  # the sender met a server that was away
        self.signals = 0
        self.draining = False  # local drain: SIGTERM, or N quick failures
        self.server_drain = False
        self.terminating = False  # second SIGTERM: stop the runs
        self.quick_failures = 0
        self.channel: Channel | None = None
        self.subreaper = False
        indices = [] if options.cpu_only else options.gpus
        self.gpus = Gpus(None if options.cpu_only else load_nvml(), indices)
        if indices is None:
            indices = [g["index"] for g in self.gpus.inventory]
        self.slot_used: dict[int, float] = dict.fromkeys(indices, 0.0)
        self.sampler = Sampler(self.gpus, disk_path=str(self.state), runs=self._runs_snapshot)

    def _run_folders(self, options: Options) -> tuple[Path, Path, str]:
        """Where runs work, where their code and environments are built, and their `muster` module.

        Run as another user, each must be a folder that user reaches (and owns, for the build
        folder): the agent's state stays its own; the module is copied beside the runs.
        """
        work_root = Path(options.work_dir) if options.work_dir else self.state / "work"
        user = self.run_user
        if user is None:
            return work_root, self.state, SDK_DIR
        shared = work_root / ".muster"
        for folder in (work_root, shared):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o711)  # noqa: S103 - search only: the run's user reaches its own folder, lists none
        sdk = shared / "sdk"
        shutil.rmtree(sdk, ignore_errors=True)
        shutil.copytree(SDK_DIR, sdk, ignore=shutil.ignore_patterns("__pycache__"))
        for root, _dirs, files in os.walk(sdk):
            os.chmod(root, 0o755)  # noqa: S103 - the module every run imports, read-only to them
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        if not can_reach(sdk, user):  # every folder above searchable by the user, the module readable
            raise IsolationError(
                f"{user.name} cannot reach the working folder {work_root}: choose one it can with --work-dir"
            )
        build = shared / "build"
        build.mkdir(exist_ok=True)
        give_to(build, user)
        os.chmod(build, 0o700)
        return work_root, build, str(sdk)

    # -- registration --------------------------------------------------------------------

    def registration(self) -> dict[str, Any]:
        models = {g["index"]: g for g in self.gpus.inventory}
        slots = [models.get(i, {"index": i}) for i in sorted(self.slot_used)]
        return {
            "name": self.name,
            "instance_id": self.instance_id,
            "hostname": socket.gethostname(),
            "queues": self.opts.queues,
            "gpu_slots": slots,
            "cpus": float(psutil.cpu_count() or 1),
            "memory_mb": int(psutil.virtual_memory().total // 2**20),
            "capabilities": [
                "command",
                "script",
                "snapshot",
                *(["git"] if shutil.which("git") else []),
                *(["container"] if self.opts.container_engine else []),
            ],
            "agent_version": __version__,
            "order_fairness": self.opts.order_fairness,
            "tags": self.opts.tags,
            "timeout_s": self.opts.timeout_s,
        }

    def register(self) -> bool:
        """Register, retrying while the server is away; False when a signal stopped the agent first."""
        backoff = Backoff()
        while not self.stop_event.is_set() and not self.signalled.is_set():
            try:
                self.client.request("POST", "workers/", self.registration())
                log.info(
                    "registered %s on %s for queues %s with GPU slots %s",
                    self.name, self.client.server, ", ".join(self.opts.queues), sorted(self.slot_used) or "none",
                )  # fmt: skip
                return True
            except ServerAway as e:
                delay = backoff.next()
                log.warning("server away (%s); registering again in %.1fs", e, delay)
                self.signalled.wait(delay)
        return False

    # -- slots ---------------------------------------------------------------------------

    def assign_gpus(self, need: float) -> list[int]:
        """Pick GPU slots: whole free slots for whole GPUs, the fullest slot that fits for a fraction."""
        if need <= 0 or not self.slot_used:
            return []
        if need >= 1:
            count = math.ceil(need)
            free = [i for i, used in sorted(self.slot_used.items()) if used == 0]
            chosen = free[:count]
            if len(chosen) < count:
                log.warning("asked for %s GPUs but only %s slots are free", need, len(free))
            for i in chosen:
                self.slot_used[i] = 1.0
            return chosen
        fits = [(used, i) for i, used in self.slot_used.items() if used + need <= 1.0 + 1e-9]
        if not fits:
            log.warning("asked for %s of a GPU but no slot has room", need)
            return []
        _, best = max(fits, key=lambda t: (t[0], -t[1]))
        self.slot_used[best] += need
        return [best]

    def release_gpus(self, run: Run) -> None:
        for i in run.gpu_indices:
            share = 1.0 if run.gpus >= 1 else run.gpus
            self.slot_used[i] = max(0.0, self.slot_used.get(i, 0.0) - share)

    def _runs_snapshot(self) -> dict[str, Run]:
        with self.runs_lock:
            return dict(self.runs)

    # -- claiming ------------------------------------------------------------------------

    def claim_loop(self) -> None:
        backoff = Backoff()
        while not self.stop_event.is_set():
            if self.draining or self.server_drain or self.terminating:
                if self.draining or self.terminating:
                    with self.runs_lock:
                        idle = not self.runs and not self.claimed
                    if idle:
                        return  # what the spool still holds is delivered by shutdown(), within its bound
                self.wake.wait(1.0)
                self.wake.clear()
                continue
            try:
                answer = self.client.request(
                    "POST",
                    f"workers/{self.name}/claim/",
                    params={"wait": self.opts.claim_wait},
                    timeout=self.opts.claim_wait + 15,
                )
                backoff.reset()
            except ServerAway as e:
                if self.draining:
                    continue  # SIGTERM cut the long-poll short
                delay = backoff.next()
                log.warning("server away (%s); claiming again in %.1fs", e, delay)
                self.signalled.wait(delay)
                continue
            except ApiError as e:
                if e.status == 404:
                    self.register()
                    continue
                delay = backoff.next()
                log.error("claim refused: %s; again in %.1fs", e, delay)
                self.signalled.wait(delay)
                continue
            if answer and answer.get("attempt"):
                attempt_id = answer["attempt"]["id"]
                with self.runs_lock:
                    self.claimed[attempt_id] = answer["attempt"]["token"]
                try:
                    self.start_run(answer)
                finally:
                    with self.runs_lock:
                        self.claimed.pop(attempt_id, None)

    def start_run(self, claim: dict[str, Any]) -> None:
        spec = claim["experiment"]
        with self.runs_lock:
            indices = self.assign_gpus(float(spec.get("gpus") or 0))
        assert self.channel is not None
        holder: dict[str, Run] = {}
        token = self.channel.register(lambda it, sc: holder["run"].progress(it, sc))
        ctx = RunContext(
            worker=self.name,
            server=self.client.server,
            spool=self.spool,
            work_root=self.work_root,
            report_socket=self.channel.path,
            keep_workdirs=self.opts.keep_workdirs,
            state_dir=self.state,
            find_links=self.opts.find_links,
            fetch_snapshot=lambda sha: self.client.download(f"snapshots/{sha}/"),
            container_engine=self.opts.container_engine,
            default_image=self.opts.default_image,
            gpu_passthrough=self.opts.gpu_passthrough,
            run_user=self.run_user,
            pass_env=tuple(self.opts.pass_env),
            sdk_dir=self.sdk_dir,
            build_dir=self.build_dir,
            ledger=self.ledger,
            cgroup_base=self.cgroup_base,
        )
        run = Run(ctx, claim, indices, token)
        holder["run"] = run
        with self.runs_lock:
            self.runs[run.id] = run
            self.claimed.pop(run.id, None)
        run.start()

    # -- the other threads ---------------------------------------------------------------

    def report_loop(self) -> None:
        interval = self.opts.report_interval
        last = time.monotonic()
        while not self.stop_event.wait(max(0.0, interval - (time.monotonic() - last))):
            last = time.monotonic()
            machine, attempt_stats = self.sampler.take()
            runs = self._runs_snapshot()
            body = {
                "instance_id": self.instance_id,
                "interval_s": interval,
                "running": self._running(runs),
                "machine": {k: v for k, v in machine.items() if v is not None},
                "attempts": [
                    {k: v for k, v in a.items() if v is not None} for a in attempt_stats if a["attempt"] in runs
                ],
            }
            try:
                answer = self.client.request(
                    "POST", f"workers/{self.name}/report/", body, timeout=max(10, interval * 2)
                )
            except ServerAway as e:
                self.server_back.clear()
                log.warning("report not delivered (%s); running on", e)
                continue
            except ApiError as e:
                log.error("report refused: %s", e)
                continue
            self.server_back.set()  # the sender, waiting out a backoff, goes now
            self.obey(answer, runs)

    def _running(self, runs: dict[str, Run]) -> list[dict[str, Any]]:
        """Live runs, and ended ones whose end is not delivered yet (the server must not retry those)."""
        out = [{"attempt": r.id, "token": r.token, "iteration": r.iteration} for r in runs.values()]
        with self.runs_lock:
            claimed = [(a, t) for a, t in self.claimed.items() if a not in runs]
        out += [{"attempt": a, "token": t} for a, t in claimed]
        for attempt_id in self.spool.attempts():
            if attempt_id not in runs:
                try:
                    token = self.spool.meta(attempt_id)["token"]
                except (OSError, ValueError, KeyError):
                    continue
                out.append({"attempt": attempt_id, "token": token})
        return out

    def obey(self, answer: dict[str, Any], runs: dict[str, Run]) -> None:
        for attempt_id in answer.get("kill") or []:
            run = runs.get(attempt_id)
            if run is not None and not run.finished:
                log.warning("killing %s: the server gave it to another worker", attempt_id)
                run.request_stop(Ending("failed", "worker_lost", "not this worker's any more", report=False), grace=0)
        for attempt_id in answer.get("stop") or []:
            run = runs.get(attempt_id)
            if run is not None:
                run.request_stop(Ending("stopped", "stopped", "stopped by a user"))
        drain = bool(answer.get("drain"))
        if drain != self.server_drain:
            log.info("the server %s this worker", "drains" if drain else "undrains")
            self.server_drain = drain
            self.wake.set()

    def sender_loop(self) -> None:
        backoff = Backoff()
        while not (self.stop_event.is_set() and not self.spool.attempts()):
            sent_any = False
            away = False
            for attempt_id in self.spool.attempts():
                if self._forgotten(attempt_id):
                    continue
                try:
                    sent_any |= self._send_head(attempt_id)
                except ServerAway as e:
                    away = True
                    self.sender_away.set()
                    delay = backoff.next()
                    log.warning("server away (%s); delivering again in %.1fs", e, delay)
                    self.server_back.clear()
                    self.server_back.wait(delay)
                    break
            if not away:
                backoff.reset()
            if not sent_any and not away:
                if self.stop_event.is_set():
                    return
                self.spool.wait(0.5)

    def _forgotten(self, attempt_id: str) -> bool:
        """Close a spooled attempt that holds nothing to send and that no run or claim of ours owns
        (a previous instance died after its last message was delivered): True when it was closed."""
        if self.spool.pending(attempt_id):
            return False
        with self.runs_lock:
            ours = attempt_id in self.runs or attempt_id in self.claimed
        if ours:
            return False
        log.info("forgetting %s: nothing of it is left to deliver", attempt_id)
        self.spool.close_attempt(attempt_id)
        return True

    MERGE = 50

    def _send_head(self, attempt_id: str) -> bool:
        head = self.spool.head(attempt_id)
        if head is None:
            return False
        path, msg = head
        kind, body = msg["kind"], msg["body"]
        paths = [path]
        if kind == "logs":
            # After an outage many batches wait: send them together (each chunk keeps its seq).
            for more_path, more in self._following_logs(attempt_id, path):
                body = {**body, "chunks": body["chunks"] + more["body"]["chunks"]}
                paths.append(more_path)
        try:
            answer = self.client.request("POST", f"attempts/{attempt_id}/{kind}/", body)
        except ApiError as e:
            if e.status in (401, 403):
                log.error("the server refused the key (%s); keeping %s", e, kind)
                raise ServerAway(str(e)) from None
            if e.status == 404 or e.code == "stale_lease" or (e.status == 409 and kind != "finish"):
                log.warning("dropping what is left of %s: %s", attempt_id, e.message)
                self._refused(attempt_id)
                return True
            if e.status == 409 and kind == "finish":
                log.warning("%s had already ended on the server: %s", attempt_id, e.message)
                self.spool.close_attempt(attempt_id)
                return True
            log.error("the server refused a %s message of %s: %s (dropped)", kind, attempt_id, e)
            for p in paths:
                self.spool.done(p)
            return True
        for p in paths:
            self.spool.done(p)
        if kind == "finish":
            self.spool.close_attempt(attempt_id)
        elif kind == "progress" and isinstance(answer, dict) and answer.get("stop"):
            run = self._runs_snapshot().get(attempt_id)
            if run is not None:
                run.request_stop(Ending("stopped", "stopped", "stopped by a user"))
        return True

    def _following_logs(self, attempt_id: str, first: Path) -> list[tuple[Path, dict[str, Any]]]:
        out: list[tuple[Path, dict[str, Any]]] = []

        files = sorted((self.spool.root / attempt_id).glob("*.json"))
        size = first.stat().st_size
        for f in files[1 : self.MERGE]:
            try:
                msg = json.loads(f.read_bytes())
            except (OSError, ValueError):
                break
            size += f.stat().st_size
            if msg["kind"] != "logs" or size > 768 * 1024:
                break
            out.append((f, msg))
        return out

    def _refused(self, attempt_id: str) -> None:
        run = self._runs_snapshot().get(attempt_id)
        if run is not None and not run.finished:
            run.request_stop(Ending("failed", "worker_lost", "the server refused this run", report=False), grace=0)
        self.spool.close_attempt(attempt_id)

    def ticker_loop(self) -> None:
        last_flush = 0.0
        while not self.stop_event.wait(0.2):
            now = time.monotonic()
            runs = self._runs_snapshot()
            if self.subreaper:
                reap_orphans({r.proc.pid for r in runs.values() if r.proc is not None})
            if not runs:
                continue
            try:
                descendants = psutil.Process().children(recursive=True)
            except psutil.Error:
                descendants = []
            flush = now - last_flush >= 1.0
            if flush:
                last_flush = now
            for run in runs.values():
                try:
                    run.refresh_pids(descendants)
                    if flush:
                        run.flush()
                    if run.tick(now):
                        self._ended(run)
                except Exception:
                    log.exception("watching %s failed", run.id)

    def _ended(self, run: Run) -> None:
        with self.runs_lock:
            self.runs.pop(run.id, None)
            self.release_gpus(run)
        if self.channel is not None:
            self.channel.unregister(run.channel_token)
        ending = run.result
        quick = time.monotonic() - run.started_at < self.opts.quick_failure_s
        if (
            ending.outcome == "failed"
            and ending.report
            and quick
            and ending.failure_class in ("user_error", "oom", "build")
        ):
            self.quick_failures += 1
            if self.quick_failures >= self.opts.quick_failures_to_drain and not self.draining:
                self.self_drain(
                    f"{self.quick_failures} runs in a row failed within {self.opts.quick_failure_s:g} s (last: {ending.message})"
                )
        elif ending.outcome == "completed" or not quick:
            self.quick_failures = 0
        self.wake.set()

    def self_drain(self, reason: str) -> None:
        log.error("draining this worker: %s", reason)
        self.server_drain = True
        try:
            self.client.request("PATCH", f"workers/{self.name}/", {"drain": True, "reason": reason[:200]})
        except (ServerAway, ApiError) as e:
            log.error("could not tell the server about the drain: %s", e)

    # -- signals and the main loop -------------------------------------------------------

    def on_sigterm(self, signum: int, frame: Any) -> None:
        """First signal: drain. Second: stop the runs (their signal, their grace) and leave. Third: exit now."""
        self.signals += 1
        self.signalled.set()
        if self.signals >= 3:
            log.error("third signal: exiting now; the next start ends what is left of the runs")
            os._exit(1)
        if not self.draining:
            self.draining = True
            with self.runs_lock:
                n = len(self.runs)
            log.warning("draining: no new work; waiting for %s run(s). Send the signal again to stop them.", n)
            self.client.abort()  # the long-poll in flight (this is the claiming thread)
        elif not self.terminating:
            self.terminating = True
            log.warning("stopping every run")
            for run in self._runs_snapshot().values():
                run.request_stop(Ending("failed", "interrupted", "the agent was stopped"))
        self.wake.set()

    def on_cloud_notice(self, notice: str) -> None:
        """The cloud is taking this machine back: no new work, and the runs stop now as
        interrupted (back at the front of their queues, no retry used), while their end can
        still be reported."""
        log.warning("%s: stopping every run as interrupted", notice)
        self.draining = True
        if not self.terminating:
            self.terminating = True
            for run in self._runs_snapshot().values():
                run.request_stop(Ending("failed", "interrupted", notice))
        self.signalled.set()
        self.client.abort()
        self.wake.set()

    def spot_loop(self) -> None:
        watch = SpotWatch(self.opts.spot_notice or "aws", self.opts.spot_metadata_url)
        while not self.stop_event.is_set():
            notice = watch.notice()
            if notice:
                self.on_cloud_notice(notice)
                return
            self.stop_event.wait(self.opts.spot_poll_s)

    def end_previous_runs(self) -> int:
        """End what a previous instance of this agent left running, and queue each attempt's end for
        the server, before anything is claimed (muster_agent/ledger.py). How many runs it found."""
        entries = self.ledger.entries()
        engine = self.opts.container_engine

        def kill_container(name: str, sig: str) -> None:
            if engine:
                container.kill(engine, name, sig)

        for entry in entries:
            attempt_id = entry["attempt"]
            end_processes(entry, kill_container=kill_container)
            if engine and entry.get("container"):
                container.remove(engine, str(entry["container"]))
            token = entry.get("token")
            if token:
                self.spool.open_attempt(attempt_id, {"token": token, "experiment": entry.get("experiment")})
                message = "the agent died and was restarted; this run was ended"
                body = {"token": token, "outcome": "failed", "failure_class": "worker_lost", "message": message}
                self.spool.put(attempt_id, "finish", body)
            shutil.rmtree(self.work_root / attempt_id, ignore_errors=True)
            self.ledger.forget(attempt_id)
        return len(entries)

    def deliver_before_registering(self, bound_s: float = 30.0) -> None:
        """Give the sender a head start on what a previous instance left in the spool: a run that
        ended while the agent was down gets its real end recorded, instead of being ended as lost
        by this instance's registration (the server fences a previous instance's attempts).
        Bounded, and not at all while the server is away (registration waits for it anyway)."""
        deadline = time.monotonic() + bound_s
        while self.spool.attempts() and time.monotonic() < deadline:
            if self.sender_away.is_set() or self.signalled.is_set():
                return
            self.spool.wait(0.1)

    def run(self) -> int:
        self.subreaper = set_subreaper()
        make_undumpable()  # runs of the agent's own user cannot read its environment or memory
        if self.cgroup_base is not None:
            log.info("each run gets a cgroup of its own under %s", self.cgroup_base)
        else:
            log.info("no cgroups for runs here (cgroup v2 not writable): process groups and the attempt variable")
        self.end_previous_runs()
        self.channel = Channel(self.run_user)
        threads = [
            threading.Thread(target=self.sender_loop, name="sender", daemon=True),
            threading.Thread(target=self.sampler.loop, name="sampler", daemon=True),
        ]
        for t in threads:
            t.start()
        self.deliver_before_registering()
        if not self.register():
            self.shutdown(threads, deliver_s=0.0, unregister=False)
            return 0
        loops = [(self.report_loop, "report"), (self.ticker_loop, "ticker")]
        if self.opts.spot_notice:
            loops.append((self.spot_loop, "spot"))
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            threads.append(t)
        try:
            self.claim_loop()
        finally:
            self.shutdown(threads)
        return 0

    def shutdown(self, threads: list[threading.Thread], *, deliver_s: float = 30.0, unregister: bool = True) -> None:
        """Wait for the runs, deliver the spool (bounded), say goodbye to the server."""
        while True:
            with self.runs_lock:
                if not self.runs:
                    break
            time.sleep(0.2)
        if self.terminating:
            deliver_s = min(deliver_s, 5.0)  # told twice: leave soon
        deadline = time.monotonic() + deliver_s
        while self.spool.attempts() and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.spool.attempts():
            log.warning("leaving undelivered messages in %s; the next start delivers them", self.spool.root)
        self.stop_event.set()
        self.sampler.stop_event.set()
        if unregister:
            try:
                self.client.request("DELETE", f"workers/{self.name}/", timeout=5)
            except (ServerAway, ApiError) as e:
                log.info("could not unregister: %s", e)
        if self.channel is not None:
            self.channel.close()
        log.info("agent %s stopped", self.name)


def install_signals(agent: Agent) -> None:
    signal.signal(signal.SIGTERM, agent.on_sigterm)
    signal.signal(signal.SIGINT, agent.on_sigterm)


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "muster-agent"

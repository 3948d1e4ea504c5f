"""`muster`: the command line for people, and `muster agent run` for machines.

Every command takes --json (machine-readable output). Exit codes:
0 done; 1 the experiment failed (logs -f, status --wait) or another error; 2 bad usage;
3 not found; 4 not logged in or not allowed; 5 conflict (e.g. not in a state for that);
6 the server cannot be reached; 7 the experiment was stopped.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from muster_agent import __version__
from muster_agent.capture import CaptureError, capture, capture_snapshot, entry_point_of
from muster_agent.client import ApiError, Client, ServerAway
from muster_agent.config import ConfigError, load, save
from muster_agent.isolation import IsolationError
from muster_agent.worker import Agent, Options, default_state_dir, install_signals

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_AUTH, EXIT_CONFLICT, EXIT_AWAY, EXIT_STOPPED = range(8)
TERMINAL = {"completed", "failed", "stopped"}


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


class Out:
    """Tables with rich when it is installed, plain aligned text otherwise; JSON with --json."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.console: Any = None
        if sys.stdout.isatty():  # piped output stays plain and untruncated (grep, awk, cut)
            try:
                from rich.console import Console  # noqa: PLC0415 - rich is the optional [cli] extra

                self.console = Console(highlight=False, soft_wrap=True)
            except ImportError:
                pass

    def data(self, obj: Any) -> None:
        print(json.dumps(obj, indent=2, default=str))

    def table(self, rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]], title: str = "") -> None:
        if self.as_json:
            self.data(rows)
            return
        if self.console is not None:
            from rich.table import Table  # noqa: PLC0415 - rich is the optional [cli] extra
            from rich.text import Text  # noqa: PLC0415 - rich is the optional [cli] extra

            t = Table(title=title or None, show_edge=False, header_style="bold")
            for key, label in columns:
                t.add_column(label, no_wrap=True, overflow="ellipsis", max_width=32 if key == "name" else None)
            for row in rows:
                t.add_row(*[Text(_cell(row.get(key))) for key, _ in columns])  # Text: no markup in values
            self.console.print(t)
            return
        cells = [[label for _, label in columns]] + [[_cell(r.get(k)) for k, _ in columns] for r in rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
        for c in cells:
            print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=False)).rstrip())

    def say(self, text: str, obj: Any = None) -> None:
        if self.as_json:
            self.data(obj if obj is not None else {"message": text})
        else:
            print(text)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and len(value) >= 19 and value[10:11] == "T" and value[4:5] == "-":
        return value[:10] + " " + value[11:19]  # an ISO time: to the second
    return str(value)


def _client(args: argparse.Namespace) -> Client:
    cfg = load(server=args.server, key_file=getattr(args, "key_file", None), ca_bundle=args.ca_bundle)
    return Client(cfg.server, cfg.key, ca_bundle=cfg.ca_bundle)


def _pairs(items: Sequence[str], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} takes KEY=VALUE, not {item!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


# -- commands --------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace, out: Out) -> int:
    server = args.server or os.environ.get("MUSTER_SERVER")
    if not server:
        raise ConfigError("muster login needs --server URL")
    client = Client(server, "", ca_bundle=args.ca_bundle)
    if args.username:
        password = os.environ.get("MUSTER_PASSWORD") or getpass.getpass(f"password for {args.username}: ")
        created = client.request("POST", "auth/login/", {"username": args.username, "password": password}, auth=False)
        key = created["token"]
    else:
        key = os.environ.get("MUSTER_API_KEY") or (
            sys.stdin.readline().strip() if not sys.stdin.isatty() else getpass.getpass("API key: ")
        )
    client.key = key
    client.request("GET", "queues/")  # proves the key works before it is saved
    path = save(server.rstrip("/"), key, args.ca_bundle)
    out.say(f"logged in to {server}; the key is in {path}", {"server": server, "config": str(path)})
    return EXIT_OK


def cmd_queues(args: argparse.Namespace, out: Out) -> int:
    rows = _client(args).request("GET", "queues/")
    out.table(
        rows,
        [("name", "Queue"), ("in_queue", "Queued"), ("worker_count", "Workers"), ("paused", "Paused"), ("id", "Id")],
    )
    return EXIT_OK


def cmd_workers(args: argparse.Namespace, out: Out) -> int:
    rows = _client(args).request("GET", "workers/")
    for r in rows:
        r["queue_names"] = [q["name"] for q in r.get("queues", [])]
    out.table(
        rows,
        [("name", "Worker"), ("status", "Status"), ("queue_names", "Queues"), ("gpus", "GPUs"),
         ("hostname", "Host"), ("last_seen_at", "Last seen")],
    )  # fmt: skip
    return EXIT_OK


def _autoscaler_id(client: Client, ref: str) -> str:
    """An autoscaler by id or name."""
    for app in client.request("GET", "autoscalers/"):
        if ref in (app["id"], app["name"]):
            return str(app["id"])
    raise UsageError(f"no autoscaler named {ref!r} (muster autoscalers lists them)")


def cmd_autoscalers(args: argparse.Namespace, out: Out) -> int:
    """List the autoscaler apps, or act on one: show, start, stop, export, import, machines, console."""
    client = _client(args)
    action = args.action
    if action == "list":
        rows = client.request("GET", "autoscalers/")
        for r in rows:
            r["queue_names"] = sorted(r.get("queues", {}))
        out.table(rows, [("name", "Autoscaler"), ("provider", "Provider"), ("state", "State"), ("running", "Running"),
                         ("idle", "Idle"), ("queue_names", "Queues"), ("id", "Id")])  # fmt: skip
        return EXIT_OK
    if action == "import":
        if not args.ref:
            raise UsageError("muster autoscalers import FILE.json (from muster autoscalers export)")
        try:
            body = json.loads(Path(args.ref).read_text())
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read {args.ref}: {e}") from None
        app = client.request("POST", "autoscalers/", body)
        out.say(f"{app['id']} {app['name']} created (stopped: muster autoscalers start {app['name']})", app)
        return EXIT_OK
    if not args.ref:
        raise UsageError(f"muster autoscalers {action} NAME")
    app_id = _autoscaler_id(client, args.ref)
    if action in ("start", "stop"):
        state = "running" if action == "start" else "stopped"
        app = client.request("POST", f"autoscalers/{app_id}/state/", {"state": state})
        out.say(f"{app['name']} {app['state']}", app)
    elif action == "export":
        print(json.dumps(client.request("GET", f"autoscalers/{app_id}/export/"), indent=2))
    elif action == "machines":
        rows = client.request("GET", f"autoscalers/{app_id}/instances/")
        out.table(rows, [("worker_name", "Machine"), ("resource", "Resource"), ("state", "State"),
                         ("cloud_id", "Cloud id"), ("cost_usd", "Cost $"), ("end_reason", "Ended because")])  # fmt: skip
    elif action == "console":
        for d in reversed(client.request("GET", f"autoscalers/{app_id}/decisions/")):
            out.say(f"{d['at']}  {d['kind']:<10} {d['message']}", d)
    else:  # show
        app = client.request("GET", f"autoscalers/{app_id}/")
        spend = client.request("GET", f"autoscalers/{app_id}/spend/")
        queues = ", ".join(q + " -> " + " > ".join(r) for q, r in app["queues"].items()) or "none"
        error = " - " + app["error"] if app["error"] else ""
        out.say(
            f"{app['name']} ({app['provider']}): {app['state']}{error}\n"
            f"  machines: {app['running']} running, {app['idle']} idle or starting\n"
            f"  queues: {queues}\n"
            f"  spend: ${spend['today_usd']} today, ${spend['month_usd']} this month, "
            f"${spend['burn_usd_per_hour']}/h now, ${spend['forecast_month_usd']} forecast for the month",
            {**app, "spend": spend},
        )
    return EXIT_OK


def _command(args: argparse.Namespace, verb: str) -> list[str]:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(f"{verb} needs a command after --, e.g. muster {verb} -- python train.py --lr 0.1")
    return command


def _spec_body(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    """The experiment fields `enqueue` and `run` share."""
    body: dict[str, Any] = {
        "name": args.name or " ".join(command)[:200],
        "command": command,
        "queue": args.queue,
        "priority": args.priority,
        "gpus": args.gpus,
        "cpus": args.cpus,
        "env": _pairs(args.env, "--env"),
        "parameters": _pairs(args.param, "--param"),
    }
    if args.max_runtime:
        body["max_runtime_s"] = args.max_runtime
    if args.stop_signal:
        body["stop_signal"] = args.stop_signal
    if args.stop_grace is not None:
        body["stop_grace_s"] = args.stop_grace
    if args.project:
        body["project"] = args.project
    return body


def cmd_enqueue(args: argparse.Namespace, out: Out) -> int:
    body = _spec_body(args, _command(args, "enqueue"))
    answer = _client(args).request("POST", "experiments/", body)
    exp = _unwrap(answer)
    out.say(f"{exp['id']} {exp['status']} in {exp.get('queue_name') or args.queue}", answer)
    return EXIT_OK


def _unwrap(answer: dict[str, Any]) -> dict[str, Any]:
    """State changes answer {experiment, changed, warnings}: warnings go to stderr."""
    for warning in answer.get("warnings") or []:
        print(f"muster: warning: {warning}", file=sys.stderr)
    exp: dict[str, Any] = answer.get("experiment", answer)
    return exp


def cmd_run(args: argparse.Namespace, out: Out) -> int:
    command = _command(args, "run")
    client = _client(args)
    try:
        if args.snapshot:
            code, tarball = capture_snapshot(Path.cwd(), freeze=args.freeze)
            sha = hashlib.sha256(tarball).hexdigest()
            client.upload(f"snapshots/{sha}/", tarball, "application/gzip")
            code["snapshot"] = sha
        else:
            code = capture(Path.cwd(), freeze=args.freeze)
    except CaptureError as e:
        raise UsageError(str(e)) from None

    code["entry_point"] = args.entry_point or entry_point_of(command)
    body = {**_spec_body(args, command), **code}
    if args.image:
        body["container_image"] = args.image
    answer = client.request("POST", "experiments/", body)
    exp = _unwrap(answer)
    if args.snapshot:
        short = f"snapshot {code['snapshot'][:12]}"
    else:
        short = f"{code['commit'][:12]}{' + uncommitted changes' if code['diff'] else ''}"
    if not (args.wait or args.follow):
        out.say(f"{exp['id']} {exp['status']} in {exp.get('queue_name') or args.queue} ({short})", answer)
        return EXIT_OK
    print(f"muster: {exp['id']} {exp['status']} in {exp.get('queue_name') or args.queue} ({short})", file=sys.stderr)
    if args.follow:
        follow = argparse.Namespace(**vars(args), id=exp["id"], attempt=None, interval=1.0)
        cmd_logs(follow, Out(False))
    while (exp := client.request("GET", f"experiments/{exp['id']}/"))["status"] not in TERMINAL:
        time.sleep(1)
    if out.as_json:
        out.data(exp)
    return _exit_code_of(exp)


def _exit_code_of(exp: dict[str, Any]) -> int:
    """The experiment's own exit code when it has one (failed runs), else 0 / 1 / 7."""
    code = exp.get("exit_code")
    if exp["status"] == "failed" and isinstance(code, int) and 0 < code < 256:
        return code
    return _exit_for(exp)


EXP_COLUMNS = [("id", "Id"), ("name", "Name"), ("status", "Status"), ("queue_name", "Queue"),
               ("last_iteration", "Iteration"), ("exit_code", "Exit"), ("updated_at", "Updated")]  # fmt: skip


def cmd_status(args: argparse.Namespace, out: Out) -> int:
    client = _client(args)
    if not args.id:
        page = client.request("GET", "experiments/", params={"status": args.filter_status})
        out.table(page["results"], EXP_COLUMNS)
        return EXIT_OK
    exp = client.request("GET", f"experiments/{args.id}/")
    while args.wait and exp["status"] not in TERMINAL:
        time.sleep(1)
        exp = client.request("GET", f"experiments/{args.id}/")
    if out.as_json:
        out.data(exp)
    else:
        for key, label in [*EXP_COLUMNS, ("status_message", "Message"), ("retry_count", "Retries")]:
            print(f"{label:>10}  {_cell(exp.get(key))}")
    return _exit_for(exp) if args.wait else EXIT_OK


def _exit_for(exp: dict[str, Any]) -> int:
    if exp["status"] == "completed":
        return EXIT_OK
    if exp["status"] == "stopped":
        return EXIT_STOPPED
    return EXIT_FAILED


def cmd_logs(args: argparse.Namespace, out: Out) -> int:
    client = _client(args)
    after: int | None = None
    attempt = args.attempt
    shown: list[int] = []  # the chunks printed, to tell at the end which of them the stored log dropped

    def show(page: dict[str, Any]) -> None:
        for chunk in page["chunks"]:
            sys.stdout.write(json.dumps(chunk) + "\n" if out.as_json else chunk["text"])
            shown.append(chunk["seq"])
        sys.stdout.flush()

    while True:
        page = client.request("GET", f"experiments/{args.id}/logs/", params={"after": after, "attempt": attempt})
        attempt = attempt or page.get("attempt")
        show(page)
        after = page["next_after"]
        if page["chunks"]:
            continue  # more may be waiting: read on before sleeping
        if not args.follow:
            return EXIT_OK
        exp = client.request("GET", f"experiments/{args.id}/")
        if exp["status"] in TERMINAL and (exp.get("current_attempt") in (None, attempt)):
            # One more read: chunks delivered just before the end.
            last = client.request("GET", f"experiments/{args.id}/logs/", params={"after": after, "attempt": attempt})
            show(last)
            _say_what_was_dropped(args.id, last.get("window"), shown)
            return _exit_for(exp)
        if attempt is None or exp.get("current_attempt") not in (None, attempt):
            attempt, after = exp.get("current_attempt"), None  # a retry started: follow the new attempt
            shown.clear()
        time.sleep(args.interval)


def _say_what_was_dropped(experiment: str, window: dict[str, Any] | None, shown: list[int]) -> None:
    """A follower that kept up printed tail lines that the stored log dropped later, when more
    output pushed them out; a stream cannot take them back, so it says so (on stderr, leaving the
    log on stdout as printed)."""
    if not window:
        return
    low = -1 if window["head_end"] is None else window["head_end"]
    high = window["kept_from"]
    if not any(low < seq and (high is None or seq < high) for seq in shown):
        return
    lines = window["dropped_lines"]
    print(
        f"[… to stay under its size cap, the stored log dropped {window['dropped_bytes']:,} bytes "
        f"({lines:,} line{'s' if lines != 1 else ''}) from its middle, output shown above among them; "
        f"`muster logs {experiment}` prints the stored copy …]",
        file=sys.stderr,
    )


def _action(verb: str, path: str) -> Any:
    def run(args: argparse.Namespace, out: Out) -> int:
        body: dict[str, Any] = {}
        if verb == "rerun":
            if args.set:
                body["overrides"] = _pairs(args.set, "--set")
            if args.queue:
                body["queue"] = args.queue
        answer = _client(args).request("POST", f"experiments/{args.id}/{path}/", body)
        exp = _unwrap(answer)
        note = "" if answer.get("changed", True) else " (nothing to change)"
        if verb == "stop" and exp["status"] == "in_progress" and answer.get("changed", True):
            note = " (stopping: its agent signals it within a report interval)"
        out.say(f"{exp['id']} {exp['status']}{note}", answer)
        return EXIT_OK

    return run


def cmd_agent(args: argparse.Namespace, out: Out) -> int:
    # A stop signal that arrives while the agent is being set up is kept and handled as soon as
    # the agent exists (a plain SIGTERM then would kill it by signal, skipping its shutdown).
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
    )
    gpus: list[int] | None = None
    if args.gpus:
        try:
            gpus = [int(g) for g in args.gpus.split(",") if g.strip()]
        except ValueError:
            raise UsageError(f"--gpus takes indices like 0,1,2, not {args.gpus!r}") from None
    opts = Options(
        queues=args.queue or ["default"],
        gpus=gpus,
        cpu_only=args.cpu_only,
        order_fairness=args.order_fairness,
        report_interval=args.report_interval,
        claim_wait=args.claim_wait,
        state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
        timeout_s=args.timeout,
        tags=args.tag,
        keep_workdirs=args.keep_workdirs,
        quick_failures_to_drain=args.drain_after,
        find_links=args.find_links,
        container_engine=args.container_engine,
        default_image=args.default_image,
        gpu_passthrough=args.gpu_passthrough or ("docker" if args.container_engine == "docker" else "cdi"),
        run_as=args.run_as or os.environ.get("MUSTER_RUN_AS") or None,
        work_dir=Path(args.work_dir or os.environ["MUSTER_WORK_DIR"])
        if args.work_dir or os.environ.get("MUSTER_WORK_DIR")
        else None,
        pass_env=[*args.pass_env, *filter(None, os.environ.get("MUSTER_PASS_ENV", "").split(","))],
        spot_notice=args.spot_notice,
        spot_metadata_url=args.spot_metadata_url,
    )
    if args.name:
        opts.name = args.name
    try:
        agent = Agent(_client(args), opts)
    except IsolationError as e:
        raise UsageError(str(e)) from None
    if os.environ.get("MUSTER_API_KEY") and not (args.key_file or os.environ.get("MUSTER_API_KEY_FILE")):
        logging.getLogger("muster.agent").warning(
            "the agent key is in the environment (MUSTER_API_KEY); prefer a file of mode 600 (--key-file or "
            "MUSTER_API_KEY_FILE): runs never get it either way, but an environment is easy to leak"
        )
    install_signals(agent)
    for signum in early:
        agent.on_sigterm(signum, None)
    return agent.run()


# -- parser ----------------------------------------------------------------------------------


def _add_spec_args(s: argparse.ArgumentParser) -> None:
    s.add_argument("--queue", default="default", help="the queue's name or id (default: default)")
    s.add_argument("--name", help="a name to find it by (default: the command)")
    s.add_argument("--project", help="a project to group it under")
    s.add_argument("--priority", type=int, default=0, help="-1000 to 1000; higher runs first within a queue")
    s.add_argument("--gpus", type=float, default=0, help="GPUs it needs: a whole number, or a fraction to share one")
    s.add_argument("--cpus", type=float, default=1,
                   help="CPUs it needs (default 1: an agent on a 4-CPU machine runs at most 4 at once; "
                        "0.25 packs more)")  # fmt: skip
    s.add_argument("--max-runtime", type=int, metavar="SECONDS", help="stop it (failed, timeout) after this long")
    s.add_argument("--stop-signal", metavar="SIGNAL", help="what a stop sends first (default SIGTERM)")
    s.add_argument("--stop-grace", type=int, metavar="SECONDS",
                   help="how long a stop waits after the signal before SIGKILL (default 60)")  # fmt: skip
    s.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="an environment variable (repeat)")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="also ${KEY} in the command")


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("--server", help="server URL (default: MUSTER_SERVER, then `muster login`)")
    common.add_argument("--ca-bundle", help="CA certificates for TLS (default: MUSTER_CA_BUNDLE)")
    common.add_argument("--json", action="store_true", help="machine-readable output")

    p = argparse.ArgumentParser(
        prog="muster", description="Muster: queues, workers and experiments.", allow_abbrev=False
    )
    p.add_argument("--version", action="version", version=f"muster {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("login", parents=[common], help="save the server and an API key")
    s.add_argument("--username", help="log in with a password (prompted, or MUSTER_PASSWORD) for a new key")
    s.set_defaults(func=cmd_login)

    sub.add_parser("queues", parents=[common], help="list queues").set_defaults(func=cmd_queues)
    sub.add_parser("workers", parents=[common], help="list workers").set_defaults(func=cmd_workers)
    s = sub.add_parser("autoscalers", parents=[common], help="list the autoscalers, or show, start or stop one")
    s.add_argument("action", nargs="?", default="list",
                   choices=["list", "show", "start", "stop", "export", "import", "machines", "console"],
                   help="what to do (default: list)")  # fmt: skip
    s.add_argument("ref", nargs="?", help="the autoscaler's name or id (for import: the JSON file)")
    s.set_defaults(func=cmd_autoscalers)

    s = sub.add_parser("enqueue", parents=[common], help="queue a command: muster enqueue --queue Q -- CMD ...")
    _add_spec_args(s)
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_enqueue)

    s = sub.add_parser("run", parents=[common], help="run this git repository's code: muster run -- CMD ...")
    _add_spec_args(s)
    s.add_argument("--image", help="run in this container image (on agents with --container-engine)")
    s.add_argument("--entry-point", help="the script, for the record (default: read from the command)")
    s.add_argument("--freeze", action="store_true", help="requirements from pip freeze of this environment")
    s.add_argument("--snapshot", action="store_true",
                   help="upload the working tree (tracked and not-ignored files) instead of using the git remote")  # fmt: skip
    s.add_argument("--wait", action="store_true", help="wait for the end; exit with the experiment's exit code")
    s.add_argument("--follow", action="store_true", help="stream the output (implies --wait)")
    s.add_argument("command", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("status", parents=[common], help="one experiment, or the latest ones")
    s.add_argument("id", nargs="?")
    s.add_argument("--status", dest="filter_status", help="only experiments in this status")
    s.add_argument("--wait", action="store_true", help="wait until it ends; exit 0 completed, 1 failed, 7 stopped")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("logs", parents=[common], help="an experiment's output")
    s.add_argument("id")
    s.add_argument("-f", "--follow", action="store_true", help="follow until the experiment ends")
    s.add_argument("--attempt", help="an earlier attempt's id")
    s.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_logs)

    for verb, path, text in (("stop", "stop", "stop a run (or take it out of its queue)"),
                             ("dequeue", "dequeue", "take a queued experiment out of its queue")):  # fmt: skip
        s = sub.add_parser(verb, parents=[common], help=text)
        s.add_argument("id")
        s.set_defaults(func=_action(verb, path))

    s = sub.add_parser("rerun", parents=[common], help="run a finished experiment again (--set makes a clone)")
    s.add_argument("id")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a field of the copy, e.g. --set gpus=2 (repeat)")  # fmt: skip
    s.add_argument("--queue", help="queue it here instead of its own queue")
    s.set_defaults(func=_action("rerun", "rerun"))

    a = sub.add_parser("agent", allow_abbrev=False, help="the agent that runs experiments on this machine")
    asub = a.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    r = asub.add_parser(
        "run", parents=[common], allow_abbrev=False, help="serve queues (the key: MUSTER_API_KEY or --key-file)"
    )
    r.add_argument("--queue", action="append", help="a queue to serve, in priority order (repeat)")
    r.add_argument(
        "--gpus",
        help="GPU indices this agent owns, e.g. 0,1 (default: every GPU NVML finds); "
        "without NVML they are slots, to try packing (docs/agent.md)",
    )
    r.add_argument("--cpu-only", action="store_true", help="offer no GPU slots, even where NVML finds GPUs")
    r.add_argument("--name", help="worker name (default: the hostname)")
    r.add_argument("--order-fairness", action="store_true", help="take turns between queues instead of strict order")
    r.add_argument("--key-file", help="file holding the agent key (mode 600)")
    r.add_argument("--state-dir", help="spool and working folders (default: ~/.local/state/muster-agent)")
    r.add_argument("--report-interval", type=float, default=5.0, help="seconds between reports (default 5)")
    r.add_argument("--claim-wait", type=int, default=30, help="seconds one long-poll waits")
    r.add_argument("--timeout", type=int, default=0, help="seconds of silence before the server calls it lost")
    r.add_argument("--drain-after", type=int, default=5, help="drain after this many quick failures in a row")
    r.add_argument("--tag", action="append", default=[], help="a label shown with the worker (repeat)")
    r.add_argument("--keep-workdirs", action="store_true", help="keep each run's working folder after it ends")
    r.add_argument("--find-links", help="a folder of wheels to build environments from (offline)")
    r.add_argument("--container-engine", choices=["podman", "docker"], help="run attempts in containers")
    r.add_argument("--default-image", help="the image for experiments that name none (with --container-engine)")
    r.add_argument("--gpu-passthrough", choices=["cdi", "docker", "none"],
                   help="how GPU slots reach a container (default: cdi for podman, docker for docker)")  # fmt: skip
    r.add_argument("--run-as", help="the Unix user experiments run as (MUSTER_RUN_AS; as root the default is "
                                     "muster-run, which must exist; otherwise the agent's own user)")  # fmt: skip
    r.add_argument("--work-dir", help="the runs' working folders (MUSTER_WORK_DIR; default: STATE_DIR/work); "
                                      "with --run-as, a folder that user can reach")  # fmt: skip
    r.add_argument("--pass-env", action="append", default=[], metavar="NAME",
                   help="one more of the agent's variables runs get (repeat; MUSTER_PASS_ENV=A,B)")  # fmt: skip
    r.add_argument("--spot-notice", choices=["aws", "gcp"],
                   help="on a Spot or preemptible machine: when the cloud says it takes the machine back, "
                        "stop the runs as interrupted (they go back to the front of their queues)")  # fmt: skip
    r.add_argument("--spot-metadata-url", help="the metadata server to read the notice from (default: the cloud's)")
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default: info")
    r.set_defaults(func=cmd_agent)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        out = Out(getattr(args, "json", False))
        return _run(args, out)
    except BrokenPipeError:
        # The reader went away (`muster logs ID | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by it


def _run(args: argparse.Namespace, out: Out) -> int:
    try:
        return int(args.func(args, out))
    except UsageError as e:
        print(f"muster: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError as e:
        print(f"muster: {e}", file=sys.stderr)
        return EXIT_AUTH
    except ServerAway as e:
        print(f"muster: cannot reach the server: {e}", file=sys.stderr)
        return EXIT_AWAY
    except ApiError as e:
        if out.as_json:
            print(json.dumps(e.body if e.body is not None else {"error": {"code": e.code, "message": e.message}}))
        print(f"muster: {e.message}" + (f" ({e.field})" if e.field else ""), file=sys.stderr)
        if e.status == 404:
            return EXIT_NOT_FOUND
        if e.status in (401, 403):
            return EXIT_AUTH
        if e.status == 409:
            return EXIT_CONFLICT
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

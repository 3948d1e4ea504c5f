"""The autoscalers' state changes: an app's life (create, start, stop) and the loop.

The loop (`reconcile`) is level-triggered and safe to run many times at once:

1. It lists the app's machines in the cloud, holding no lock.
2. Under the app row's lock (skipped when another run holds it), it applies what it saw:
   - a machine up moves pending to booting;
   - a registered agent moves its row to idle or busy;
   - a machine gone ends its row and unregisters its worker at once;
   - one that never registered within max spin-up time is ended;
   - one tagged as ours that no row knows (an orphan) is ended.
   It then plans launches for the waiting experiments within each resource's max instances
   and the money caps (capacity is the rows in live states, never registered workers), and
   drains machines idle past max idle time. The drain locks the worker row, as the claim
   does, so a machine that just took work is never drained.
3. After the commit, it makes the cloud calls: launches (idempotent, keyed by the row's
   id) and terminations.

Every step is a Decision (the app's console). reference/autoscaling.md §5 has the rules.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from accounts.actor import SYSTEM, Actor
from accounts.models import ApiKey, Role
from accounts.secrets import text_decrypt, text_encrypt
from accounts.services import apikey_create, apikey_revoke
from autoscalers import billing
from autoscalers.boot import boot_script
from autoscalers.models import (
    CAPACITY,
    FOOTPRINT,
    AppState,
    AutoscalerApp,
    Decision,
    Instance,
    InstanceState,
    Provider,
    Resource,
    ServedQueue,
)
from autoscalers.providers.base import STOPS_THE_APP, CloudError, CloudMachine, ErrorClass, LaunchSpec
from core.audit import Change, audit_record
from core.db import atomic
from core.errors import Conflict, Forbidden, InvalidInput, NotFound
from core.ids import new_id
from experiments.models import Attempt, FailureClass, UsageRecord
from queues.models import Queue, QueueEntry
from queues.services import queue_create
from workers.models import Worker, WorkerStatus
from workers.services import worker_unregister

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 120  # a machine may be up a moment before its row says so (the commit→call gap)
DRAIN_GRACE_S = 120  # a draining agent that has not exited by then is ended anyway
LAUNCH_RECLAIM_S = 120  # a launch claimed by a run that died is retried after this
KEY_DAYS = 30  # each machine's own agent key expires


def admin_check(actor: Actor) -> None:
    if not actor.is_admin or not actor.can_write:
        raise Forbidden("only admins manage autoscalers")


REPEAT_QUIET_S = 600  # a refusal or retry said once is not said again every pass for this long


def decide(app: AutoscalerApp, kind: str, message: str, instance: Instance | None = None) -> None:
    if kind in ("refuse", "retry", "warn"):
        since = timezone.now() - timedelta(seconds=REPEAT_QUIET_S)
        if Decision.objects.filter(app=app, kind=kind, message=message, at__gte=since).exists():
            return
    Decision.objects.create(app=app, kind=kind, message=message, instance=instance)
    log.info("autoscaler %s: %s: %s", app.name, kind, message)


# -- credentials: write-only ------------------------------------------------------------------


def credentials_set(app: AutoscalerApp, values: dict[str, str]) -> None:
    app.credentials_encrypted = text_encrypt(json.dumps(values)) if values else ""


def credentials_of(app: AutoscalerApp) -> dict[str, str]:
    return json.loads(text_decrypt(app.credentials_encrypted)) if app.credentials_encrypted else {}


# -- providers ----------------------------------------------------------------------------------

PROVIDERS: dict[str, Callable[[AutoscalerApp], Any]] = {}


def provider_register(name: str, make: Callable[[AutoscalerApp], Any]) -> None:
    PROVIDERS[name] = make


def provider_for(app: AutoscalerApp) -> Any:
    return PROVIDERS[app.provider](app)


def _local(app: AutoscalerApp) -> Any:
    from autoscalers.providers.local import LocalProvider  # noqa: PLC0415 - the clouds load only when used

    return LocalProvider(Path(settings.VAR_DIR) / "autoscalers", app.pk)


def _aws(app: AutoscalerApp) -> Any:
    from autoscalers.providers.aws import AwsProvider  # noqa: PLC0415 - the clouds load only when used

    return AwsProvider(app.pk, dict(app.settings or {}), credentials_of(app))


def _gcp(app: AutoscalerApp) -> Any:
    from autoscalers.providers.gcp import GcpProvider  # noqa: PLC0415 - the clouds load only when used

    return GcpProvider(app.pk, dict(app.settings or {}), credentials_of(app))


provider_register(Provider.LOCAL, _local)
provider_register(Provider.AWS, _aws)
provider_register(Provider.GCP, _gcp)


# -- an app's life ------------------------------------------------------------------------------

LOCAL_QUEUE = "autoscaled"


@atomic
def local_autoscaler_ensure(*, owner: User) -> AutoscalerApp:
    """`make run`'s first run: a running Local app serving the queue `autoscaled`, at most two
    machines (agent processes on this host), stopped after a minute idle, so that a new user
    sees machines start, run, go idle and stop with no cloud account."""
    found = AutoscalerApp.objects.filter(provider=Provider.LOCAL, name="local").first()
    if found is not None:
        return found
    queue = Queue.objects.filter(name=LOCAL_QUEUE).first() or queue_create(actor=SYSTEM, name=LOCAL_QUEUE)
    app = AutoscalerApp.objects.create(
        name="local", provider=Provider.LOCAL, state=AppState.RUNNING, owner=owner, workers_prefix="local-auto",
        polling_interval_s=10, max_idle_s=60, max_spinup_s=120,
    )  # fmt: skip
    resource = Resource.objects.create(
        app=app, name="agent", instance_type="local", cpu_mode=True, cpus=1, max_instances=2
    )
    ServedQueue.objects.create(app=app, queue=queue, resource=resource, order=0)
    decide(app, "state", f"created by the first run, serving queue {LOCAL_QUEUE}")
    return app


APP_FIELDS = (
    "name", "provider", "workers_prefix", "polling_interval_s", "max_idle_s", "max_spinup_s", "init_script",
    "extra_agent_config", "container_mode", "default_container_image", "environment", "files",
    "warn_duplicate_runs", "settings", "cap_day_usd", "cap_month_usd",
)  # fmt: skip
RESOURCE_FIELDS = (
    "instance_type", "cpu_mode", "gpu_type", "gpu_count", "cpus", "memory_mb", "spot", "spot_rollback_after_s",
    "spot_blackout_s", "machine_image", "disk_gb", "max_instances", "hourly_price_usd", "min_idle",
)  # fmt: skip


def _snapshot(app: AutoscalerApp) -> dict[str, Any]:
    snap: dict[str, Any] = json.loads(json.dumps(app_export(app), default=str))
    return snap


def app_export(app: AutoscalerApp) -> dict[str, Any]:
    """The app as the create call takes it (JSON import), without its credentials."""
    out: dict[str, Any] = {name: getattr(app, name) for name in APP_FIELDS}
    out["resources"] = [
        {"name": r.name, **{f: getattr(r, f) for f in RESOURCE_FIELDS}} for r in app.resources.order_by("name")
    ]
    queues: dict[str, list[str]] = {}
    for s in ServedQueue.objects.filter(app=app).select_related("queue", "resource").order_by("queue__name", "order"):
        queues.setdefault(s.queue.name, []).append(s.resource.name)
    out["queues"] = queues
    return out


@atomic
def app_save(*, actor: Actor, data: dict[str, Any], app_id: str | None = None) -> AutoscalerApp:
    """Create an app, or replace an existing one's fields, resources and served queues (data as
    AppWriteSerializer validated it). Credentials change only when given."""
    admin_check(actor)
    data = dict(data)
    resources = data.pop("resources")
    queue_map: dict[str, list[str]] = data.pop("queues")
    credentials = data.pop("credentials", None)
    names = list(queue_map)
    queues = {q.name: q for q in Queue.objects.filter(name__in=names)}
    missing = [n for n in names if n not in queues]
    if missing:
        raise NotFound(f"queue {missing[0]!r} does not exist", field="queues")
    clash = AutoscalerApp.objects.exclude(pk=app_id).filter(
        Q(name=data["name"]) | Q(workers_prefix=data["workers_prefix"])
    )
    for other in clash:
        field = "name" if other.name == data["name"] else "workers_prefix"
        raise Conflict(f"another autoscaler already has this {field.replace('_', ' ')}", field=field)
    if app_id is None:
        if actor.user_id is None:
            raise Forbidden("an autoscaler belongs to a person: use an admin's key")
        app = AutoscalerApp(owner_id=actor.user_id, state=AppState.STOPPED)
        before: dict[str, Any] = {}
    else:
        app = AutoscalerApp.objects.select_for_update().get(pk=app_id)
        before = _snapshot(app)
        if app.provider != data["provider"]:
            raise InvalidInput("an app's provider cannot change: make a new app", field="provider")
    for name in APP_FIELDS:
        setattr(app, name, data[name])
    if credentials is not None:
        credentials_set(app, {k: v for k, v in credentials.items() if v})
    app.save()
    kept = {r.name: r for r in Resource.objects.filter(app=app)}
    wanted = {r["name"] for r in resources}
    for name, r in kept.items():
        if name not in wanted:
            if Instance.objects.filter(resource=r, state__in=FOOTPRINT).exists():
                raise Conflict(f"resource {name} still has machines: stop them first", field="resources")
            ServedQueue.objects.filter(resource=r).delete()
            if Instance.objects.filter(resource=r).exists():
                r.max_instances = 0  # its history stays; it starts nothing more
                r.save(update_fields=["max_instances"])
                ServedQueue.objects.filter(resource=r).delete()
            else:
                r.delete()
    by_name: dict[str, Resource] = {}
    for spec in resources:
        r = kept.get(spec["name"]) or Resource(app=app, name=spec["name"])
        for f in RESOURCE_FIELDS:
            setattr(r, f, spec[f])
        r.save()
        by_name[r.name] = r
    ServedQueue.objects.filter(app=app).delete()
    ServedQueue.objects.bulk_create(
        [
            ServedQueue(app=app, queue=queues[q], resource=by_name[name], order=i)
            for q, order in queue_map.items()
            for i, name in enumerate(order)
        ]
    )
    after = _snapshot(app)
    audit_record(
        actor=actor, change=Change("autoscaler", app.pk, "create" if app_id is None else "edit", before, after)
    )
    decide(app, "config", f"{actor.label} {'created' if app_id is None else 'changed'} the app")
    return app


@atomic
def app_delete(*, actor: Actor, app_id: str) -> None:
    admin_check(actor)
    app = AutoscalerApp.objects.select_for_update().filter(pk=app_id).first()
    if app is None:
        raise NotFound(f"autoscaler {app_id} does not exist", field="id")
    if Instance.objects.filter(app=app, state__in=FOOTPRINT).exists():
        raise Conflict("this app still has machines: stop it and wait until they are gone", field="id")
    before = _snapshot(app)
    Instance.objects.filter(app=app).delete()
    app.delete()
    audit_record(actor=actor, change=Change("autoscaler", app_id, "delete", before, {}))


def console_of(*, actor: Actor, instance_id: str) -> str:
    """A machine's console output, from its cloud (admins)."""
    admin_check(actor)
    row = Instance.objects.select_related("app").filter(pk=instance_id).first()
    if row is None:
        raise NotFound(f"instance {instance_id} does not exist", field="instance")
    if not row.cloud_id:
        return ""
    try:
        return str(provider_for(row.app).console(row.cloud_id))
    except CloudError as e:
        return f"[the cloud did not give the console: {e}]"


@atomic
def app_set_state(*, actor: Actor, app_id: str, state: str) -> AutoscalerApp:
    """Start (running) or stop an app; a stopped app launches nothing, and its machines are drained."""
    admin_check(actor)
    app = AutoscalerApp.objects.select_for_update().get(pk=app_id)
    if app.state != state:
        app.state = state
        app.error = "" if state == AppState.RUNNING else app.error
        app.save(update_fields=["state", "error", "updated_at"])
        decide(app, "state", f"{actor.label} set the app {state}")
    return app


# -- the loop -------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What one reconcile decided under the lock, to do after the commit."""

    launches: list[str] = field(default_factory=list)  # instance ids
    terminations: list[tuple[str, str]] = field(default_factory=list)  # (instance id or "", cloud id)
    skipped: bool = False


@dataclass(frozen=True)
class Spend:
    today: Decimal
    month: Decimal
    burn_per_hour: Decimal
    forecast_month: Decimal


def app_spend(app: AutoscalerApp, now: datetime | None = None) -> Spend:
    """Spend so far today and this month, the burn rate and the month-end forecast."""
    now = now or timezone.now()
    rows = Instance.objects.filter(app=app).filter(Q(ended_at__isnull=True) | Q(ended_at__gte=billing.month_start(now)))
    lives = [
        billing.Life(i.hourly_price_usd, i.started_at, i.ended_at)
        for i in rows.only("hourly_price_usd", "started_at", "ended_at")
    ]
    month = billing.spend_between(app.provider, lives, billing.month_start(now), now)
    burn = billing.burn_rate(lives)
    return Spend(
        today=billing.spend_between(app.provider, lives, billing.day_start(now), now),
        month=month,
        burn_per_hour=burn,
        forecast_month=billing.forecast_month(month, burn, now),
    )


def _reservation(app: AutoscalerApp, resource: Resource) -> Decimal:
    """What a launch may cost before the loop sees it again: its minimum charge, or its spin-up."""
    seconds = max(billing.MINIMUM_S.get(app.provider, 0), app.max_spinup_s if app.provider != Provider.LOCAL else 0)
    return resource.hourly_price_usd * Decimal(seconds) / Decimal(3600)


def _money_refusal(app: AutoscalerApp, spend: Spend, planned: Decimal, extra: Decimal) -> str:
    if app.cap_day_usd is not None and spend.today + planned + extra > app.cap_day_usd:
        return f"the day's cap of ${app.cap_day_usd} (spent ${spend.today:.2f})"
    if app.cap_month_usd is not None and spend.month + planned + extra > app.cap_month_usd:
        return f"the month's cap of ${app.cap_month_usd} (spent ${spend.month:.2f})"
    return ""


def _waiting(app: AutoscalerApp) -> dict[str, list[tuple[float, float, int]]]:
    """Per served queue: (gpus, cpus, how many) of the experiments waiting there (one query,
    grouped by request, so its cost does not grow with the number waiting)."""
    served = ServedQueue.objects.filter(app=app).values_list("queue_id", flat=True)
    groups = (
        QueueEntry.objects.filter(queue_id__in=served)
        .values("queue_id", "experiment__gpus", "experiment__cpus")
        .annotate(n=Count("id"))
    )
    out: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for g in groups:
        out[g["queue_id"]].append((float(g["experiment__gpus"]), float(g["experiment__cpus"]), int(g["n"])))
    return out


def _fits(resource: Resource, gpus: float, cpus: float) -> bool:
    offered = 0 if resource.cpu_mode else resource.gpu_count
    return gpus <= offered and cpus <= resource.cpus


def reconcile(app_id: str, now: datetime | None = None) -> Plan:
    """One pass of the loop for one app (see the module's docstring)."""
    app = AutoscalerApp.objects.filter(pk=app_id).first()
    if app is None:
        return Plan(skipped=True)
    provider = provider_for(app)
    try:
        seen = provider.machines()
    except CloudError as e:
        _cloud_error(app, e, "listing its machines")
        return Plan()
    plan = _decide(app_id, seen, now or timezone.now())
    if plan.skipped:
        return plan
    for instance_id in plan.launches:
        _launch(app_id, instance_id, provider)
    for _instance_id, cloud_id in plan.terminations:
        try:
            provider.terminate(cloud_id)
        except CloudError as e:
            _cloud_error(app, e, f"ending {cloud_id}")
    return plan


@atomic
def _decide(app_id: str, seen: list[CloudMachine], now: datetime) -> Plan:
    plan = Plan()
    app = AutoscalerApp.objects.select_for_update(skip_locked=True).filter(pk=app_id).first()
    if app is None:  # another run holds it: that run does this pass
        return Plan(skipped=True)
    app.last_reconciled_at = now
    app.save(update_fields=["last_reconciled_at"])
    rows = list(Instance.objects.filter(app=app, state__in=FOOTPRINT).select_related("resource"))
    _observe(app, rows, seen, now, plan)
    # Launches that did not happen yet (a throttled call, a run that died before its call): again.
    stale = now - timedelta(seconds=LAUNCH_RECLAIM_S)
    plan.launches += [
        r.pk
        for r in rows
        if r.state == InstanceState.REQUESTED and (r.launch_claimed_at is None or r.launch_claimed_at < stale)
    ]
    if app.state == AppState.RUNNING:
        _plan_launches(app, rows, now, plan)
    _plan_drains(app, rows, now, plan)
    if app.warn_duplicate_runs:
        _warn_duplicates(app, rows)
    _price_usage(app, now)
    return plan


def _price_usage(app: AutoscalerApp, now: datetime) -> None:
    """The usage ledger's runs on this app's machines get their cost: the machine's hourly price
    for the run's duration (what cost reports and budgets read)."""
    prices = dict(
        Instance.objects.filter(app=app, requested_at__gte=now - timedelta(days=2)).values_list(
            "worker_name", "hourly_price_usd"
        )
    )
    if not prices:
        return
    records = list(UsageRecord.objects.filter(worker_name__in=list(prices), cost__isnull=True))
    for record in records:
        seconds = Decimal(str(max((record.ended_at - record.started_at).total_seconds(), 0.0)))
        record.cost = (prices[record.worker_name] * seconds / Decimal(3600)).quantize(Decimal("0.0001"))
    if records:
        UsageRecord.objects.bulk_update(records, ["cost"])


def _warn_duplicates(app: AutoscalerApp, rows: list[Instance]) -> None:
    """More than one of this app's machines running one experiment (a resurrected agent, an
    attempt the server fenced that a machine still runs): said in the console, once a while."""
    names = [r.worker_name for r in rows]
    doubled = (
        Attempt.objects.filter(worker_name__in=names, finished_at__isnull=True)
        .values("experiment_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
        .values_list("experiment_id", "n")
    )
    for experiment_id, n in doubled:
        decide(app, "warn", f"experiment {experiment_id} runs on {n} machines at once")


def _end(
    app: AutoscalerApp, row: Instance, now: datetime, state: str, reason: str, *, interrupted: bool = False
) -> None:
    """A machine is gone (or never came): its row ends, its key is revoked and its worker
    unregistered at once. What it still ran is ended as worker lost (retried by policy), or, when
    the cloud took the machine back, as interrupted: back to the front, no retry used."""
    row.state = state
    row.ended_at = row.ended_at or now
    row.end_reason = reason
    row.save(update_fields=["state", "ended_at", "end_reason"])
    worker = Worker.objects.filter(name=row.worker_name).first()
    if worker is not None:
        failure = FailureClass.INTERRUPTED if interrupted else FailureClass.WORKER_LOST
        worker_unregister(actor=SYSTEM, worker=worker, failure_class=failure, message=reason)
    if row.api_key_id is not None:
        key = ApiKey.objects.filter(pk=row.api_key_id, revoked_at__isnull=True).first()
        if key is not None:
            apikey_revoke(actor=SYSTEM, access_key=key.access_key)


def _observe(app: AutoscalerApp, rows: list[Instance], seen: list[CloudMachine], now: datetime, plan: Plan) -> None:
    by_row = {m.instance_id: m for m in seen if m.instance_id}
    by_cloud = {m.cloud_id: m for m in seen}  # a machine gone without its tags (a preempted GCE one)
    known = {r.pk for r in rows}
    workers = {
        w.name: w for w in Worker.objects.filter(name__in=[r.worker_name for r in rows]).only("id", "name", "status")
    }
    busy = set(
        Attempt.objects.filter(worker__name__in=list(workers), finished_at__isnull=True).values_list(
            "worker__name", flat=True
        )
    )
    for row in rows:
        machine = by_row.get(row.pk) or (by_cloud.get(row.cloud_id) if row.cloud_id else None)
        alive = machine is not None and machine.state not in ("terminated", "shutting-down", "stopped")
        if row.state == InstanceState.REQUESTED:
            continue  # its launch is under way (or will be retried)
        if not alive:
            if row.state == InstanceState.TERMINATING or row.drain_started_at is not None:
                _end(app, row, now, InstanceState.TERMINATED, row.end_reason or "drained and stopped")
            else:
                interrupted = machine is not None and machine.interrupted
                reason = "the cloud interrupted it (spot)" if interrupted else "the machine went away"
                _end(app, row, now, InstanceState.TERMINATED, reason, interrupted=interrupted)
                decide(app, "gone", f"{row.worker_name}: {reason}", row)
            continue
        if machine and machine.launched_at and row.started_at is None:
            row.started_at = machine.launched_at
        worker = workers.get(row.worker_name)
        if row.state in (InstanceState.PENDING, InstanceState.BOOTING):
            if worker is not None:
                row.state = InstanceState.BUSY if row.worker_name in busy else InstanceState.IDLE
                row.registered_at = now
                row.idle_since = now
                decide(app, "registered", f"{row.worker_name}: its agent registered", row)
            elif row.spot and _spot_too_slow(row, now):
                # Spot did not come up within its rollback timeout: end it and rest the Spot market,
                # so the waiting experiment gets an on-demand machine on the next pass.
                row.state = InstanceState.TERMINATING
                row.end_reason = f"spot not up within {row.resource.spot_rollback_after_s} s: rolling back to on-demand"
                plan.terminations.append((row.pk, row.cloud_id))
                rest = max(row.resource.spot_blackout_s, int(row.resource.spot_rollback_after_s or 0), 300)
                Resource.objects.filter(pk=row.resource_id).update(spot_blocked_until=now + timedelta(seconds=rest))
                decide(app, "rollback", f"{row.worker_name}: {row.end_reason}", row)
            elif (now - row.requested_at).total_seconds() > app.max_spinup_s:
                row.state = InstanceState.TERMINATING
                row.end_reason = f"its agent did not register within {app.max_spinup_s} s"
                plan.terminations.append((row.pk, row.cloud_id))
                decide(app, "terminate", f"{row.worker_name}: {row.end_reason}", row)
            else:
                row.state = InstanceState.BOOTING
        elif row.state in (InstanceState.IDLE, InstanceState.BUSY):
            if worker is None:  # its agent exited or was unregistered: the machine goes too
                row.state = InstanceState.TERMINATING
                row.end_reason = "its agent is gone"
                plan.terminations.append((row.pk, row.cloud_id))
                decide(app, "terminate", f"{row.worker_name}: {row.end_reason}", row)
            elif row.worker_name in busy:
                row.state = InstanceState.BUSY
                row.idle_since = None
            elif row.state == InstanceState.BUSY or row.idle_since is None:
                row.state = InstanceState.IDLE
                row.idle_since = now
        elif row.state == InstanceState.DRAINING:
            # Drained under the worker row's lock with nothing running, and a draining worker
            # claims nothing: it can be ended now (its agent's SIGTERM or the power-off finishes
            # cleanly). One still running something (an admin undrained and drained it) waits,
            # up to DRAIN_GRACE_S.
            gone = worker is None
            idle = row.worker_name not in busy
            late = row.drain_started_at is not None and (now - row.drain_started_at).total_seconds() > DRAIN_GRACE_S
            if gone or idle or late:
                row.state = InstanceState.TERMINATING
                row.end_reason = "idle: drained and stopped" if gone or idle else "idle: ended after the drain's grace"
                plan.terminations.append((row.pk, row.cloud_id))
                decide(app, "terminate", f"{row.worker_name}: {row.end_reason}", row)
        elif row.state == InstanceState.TERMINATING:
            plan.terminations.append((row.pk, row.cloud_id))  # again, until the cloud confirms
        row.save()
    for machine in seen:
        if machine.instance_id in known or machine.state in ("terminated", "shutting-down"):
            continue
        live_row = machine.instance_id and Instance.objects.filter(pk=machine.instance_id, state__in=FOOTPRINT).exists()
        young = machine.launched_at is not None and (now - machine.launched_at).total_seconds() < ORPHAN_GRACE_S
        if live_row or young:
            continue
        plan.terminations.append(("", machine.cloud_id))
        decide(app, "orphan", f"{machine.cloud_id} carries this app's tags but no live instance knows it: ending it")


def _spot_too_slow(row: Instance, now: datetime) -> bool:
    limit = row.resource.spot_rollback_after_s
    return limit is not None and (now - row.requested_at).total_seconds() > limit


def _plan_launches(app: AutoscalerApp, rows: list[Instance], now: datetime, plan: Plan) -> None:
    resources = {r.pk: r for r in Resource.objects.filter(app=app)}
    order: dict[str, list[Resource]] = defaultdict(list)
    for s in ServedQueue.objects.filter(app=app).order_by("queue_id", "order"):
        order[s.queue_id].append(resources[s.resource_id])
    footprint: dict[int, int] = defaultdict(int)
    free: dict[int, int] = defaultdict(int)  # machines that can take a waiting experiment soon
    for row in rows:
        if row.state in FOOTPRINT:
            footprint[row.resource_id] += 1
        if row.state in CAPACITY:
            free[row.resource_id] += 1
    spend = app_spend(app, now)
    # Machines still starting keep their reservation until they run (reference/autoscaling.md
    # §5.3: spend = accrued + reserved), so pass after pass cannot launch past a cap.
    starting = (InstanceState.REQUESTED, InstanceState.PENDING, InstanceState.BOOTING)
    planned_money = sum((_reservation(app, row.resource) for row in rows if row.state in starting), Decimal("0"))
    wanted: dict[int, int] = defaultdict(int)
    refusals: list[str] = []
    unserved = 0
    for queue_id, groups in _waiting(app).items():
        for gpus, cpus, count in groups:
            left = count
            for r in order.get(queue_id, []):
                if left == 0:
                    break
                if not _fits(r, gpus, cpus):
                    continue
                use = min(left, free[r.pk])
                free[r.pk] -= use
                left -= use
                if r.blocked_until and r.blocked_until > now:
                    continue
                room = r.max_instances - footprint[r.pk] - wanted[r.pk]
                while left and room > 0:
                    why = _money_refusal(app, spend, planned_money, _reservation(app, r))
                    if why:
                        refusals.append(f"{r.name}: {why}")
                        break
                    planned_money += _reservation(app, r)
                    wanted[r.pk] += 1
                    room -= 1
                    left -= 1
            unserved += left
    # The warm pool: each resource keeps at least min_idle machines that can take work.
    for r in resources.values():
        short = r.min_idle - free[r.pk] - wanted[r.pk]
        while short > 0 and r.max_instances - footprint[r.pk] - wanted[r.pk] > 0:
            if _money_refusal(app, spend, planned_money, _reservation(app, r)):
                break
            planned_money += _reservation(app, r)
            wanted[r.pk] += 1
            short -= 1
    for resource_id, n in wanted.items():
        r = resources[resource_id]
        for _ in range(n):
            spot = r.spot and not (r.spot_blocked_until and r.spot_blocked_until > now)
            pk = new_id()
            row = Instance.objects.create(
                id=pk,
                app=app,
                resource=r,
                spot=spot,
                worker_name=f"{app.workers_prefix}-{r.name}-{pk[:8]}",
                hourly_price_usd=_price(app, r, spot),
            )
            plan.launches.append(row.pk)
            decide(app, "launch", f"{row.worker_name}: starting a {r.instance_type}{' (spot)' if spot else ''}", row)
    if unserved:
        # One line a pass: how many wait, and why each resource they could use starts nothing.
        why = "; ".join(dict.fromkeys(refusals)) or "every resource that fits is at its max instances"
        decide(app, "refuse", f"no launch for {unserved} waiting experiment(s): {why}")


def _price(app: AutoscalerApp, r: Resource, spot: bool) -> Decimal:
    """The resource's hourly price; unset (0), the table's for its type and market."""
    if r.hourly_price_usd:
        return r.hourly_price_usd
    return billing.list_price(app.provider, r.instance_type, spot) or Decimal("0")


def _plan_drains(app: AutoscalerApp, rows: list[Instance], now: datetime, plan: Plan) -> None:
    """Idle past max idle time (or the app stopped): drain, under the worker row's lock, which the
    claim takes too, and only while the worker runs nothing."""
    keep: dict[int, int] = defaultdict(int)
    if app.state == AppState.RUNNING:
        for r in Resource.objects.filter(app=app):
            keep[r.pk] = r.min_idle
    idle = [r for r in rows if r.state == InstanceState.IDLE]
    idle.sort(key=lambda r: r.idle_since or now)
    for row in idle:
        long_idle = row.idle_since is not None and (now - row.idle_since).total_seconds() >= app.max_idle_s
        if app.state == AppState.RUNNING and not long_idle:
            keep[row.resource_id] -= 1
            continue
        if keep[row.resource_id] > 0:
            keep[row.resource_id] -= 1
            continue
        worker = Worker.objects.select_for_update().filter(name=row.worker_name).first()
        if worker is None or Attempt.objects.filter(worker=worker, finished_at__isnull=True).exists():
            continue  # it took work after all (or is gone: _observe ends it next pass)
        worker.draining = True
        worker.drain_reason = "autoscaler: idle"
        worker.status = WorkerStatus.DRAINING
        worker.save(update_fields=["draining", "drain_reason", "status"])
        row.state = InstanceState.DRAINING
        row.drain_started_at = now
        row.save(update_fields=["state", "drain_started_at"])
        why = "the app stopped" if app.state != AppState.RUNNING else f"idle for {app.max_idle_s} s"
        decide(app, "drain", f"{row.worker_name}: {why}", row)


# -- launches, after the commit ---------------------------------------------------------------


def _claim_launch(instance_id: str, now: datetime) -> Instance | None:
    """Take one requested row for a launch; two runs rarely both do (and the keys absorb it when they do)."""
    stale = now - timedelta(seconds=LAUNCH_RECLAIM_S)
    taken = (
        Instance.objects.filter(pk=instance_id, state=InstanceState.REQUESTED)
        .filter(Q(launch_claimed_at__isnull=True) | Q(launch_claimed_at__lt=stale))
        .update(launch_claimed_at=now)
    )
    return Instance.objects.select_related("app", "resource").get(pk=instance_id) if taken else None


def _queues_of(resource: Resource) -> list[str]:
    return list(
        ServedQueue.objects.filter(resource=resource)
        .order_by("order", "queue__name")
        .values_list("queue__name", flat=True)
    )


def _launch(app_id: str, instance_id: str, provider: Any) -> None:
    now = timezone.now()
    row = _claim_launch(instance_id, now)
    if row is None:
        return
    app, r = row.app, row.resource
    queues = _queues_of(r)
    with transaction.atomic():
        owner = User.objects.get(pk=app.owner_id)
        new = apikey_create(
            actor=SYSTEM, user=owner, name=f"autoscaler {app.name}: {row.worker_name}", role=Role.AGENT,
            expires_in_days=KEY_DAYS, allowed_queue_ids=queues, worker_prefix=row.worker_name,
        )  # fmt: skip
        Instance.objects.filter(pk=row.pk).update(api_key=new.key)
    spec = LaunchSpec(
        instance_id=row.pk,
        app_id=app.pk,
        name=row.worker_name,
        instance_type=r.instance_type,
        spot=row.spot,
        machine_image=r.machine_image,
        disk_gb=r.disk_gb,
        gpu_type=r.gpu_type,
        gpu_count=0 if r.cpu_mode else r.gpu_count,
        boot_script="",
        server_url=settings.PUBLIC_URL,
        agent_key=new.token,
        queues=tuple(queues),
        environment={str(k): str(v) for k, v in (app.environment or {}).items()},
        settings=dict(app.settings or {}),
        credentials=credentials_of(app),
    )
    spec = LaunchSpec(**{**spec.__dict__, "boot_script": boot_script(app, spec)})
    try:
        cloud_id = provider.launch(spec)
    except CloudError as e:
        _launch_failed(app, row, e)
        return
    Instance.objects.filter(pk=row.pk, state=InstanceState.REQUESTED).update(
        state=InstanceState.PENDING, cloud_id=cloud_id, started_at=timezone.now()
    )


@atomic
def _launch_failed(app: AutoscalerApp, row: Instance, e: CloudError) -> None:
    now = timezone.now()
    if e.kind in (ErrorClass.THROTTLED, ErrorClass.TRANSIENT):
        Instance.objects.filter(pk=row.pk).update(launch_claimed_at=None)  # the next pass tries again
        decide(app, "retry", f"{row.worker_name}: {e.kind} ({e}); trying again next pass", row)
        return
    fresh = Instance.objects.get(pk=row.pk)
    _end(app, fresh, now, InstanceState.FAILED, f"{e.kind}: {e}")
    if e.kind == ErrorClass.CAPACITY:
        blackout = max(row.resource.spot_blackout_s, 300)
        updates: dict[str, Any] = {"blocked_until": now + timedelta(seconds=blackout), "blocked_reason": str(e)[:300]}
        if row.spot:  # spot first: fall back to on-demand for the blackout, not to nothing
            updates = {"spot_blocked_until": now + timedelta(seconds=blackout)}
        Resource.objects.filter(pk=row.resource_id).update(**updates)
        decide(app, "capacity", f"{row.worker_name}: {e}; {row.resource.name} rests for {blackout} s", fresh)
    elif e.kind in STOPS_THE_APP:
        _cloud_error(app, e, f"starting {row.worker_name}")


def _cloud_error(app: AutoscalerApp, e: CloudError, doing: str) -> None:
    if e.kind in STOPS_THE_APP:
        AutoscalerApp.objects.filter(pk=app.pk).update(state=AppState.ERROR, error=f"{e.kind} error {doing}: {e}")
        decide(app, "error", f"{e.kind} error {doing}: {e}; the app stopped")
    else:
        decide(app, "retry", f"{e.kind} error {doing}: {e}; trying again next pass")


def apps_serving(queue_ids: list[str]) -> list[str]:
    """The running apps that serve any of these queues (an enqueue there wakes them: tasks.py)."""
    return list(
        ServedQueue.objects.filter(queue_id__in=queue_ids, app__state=AppState.RUNNING)
        .order_by()  # no ordering columns in the DISTINCT
        .values_list("app_id", flat=True)
        .distinct()
    )


def wait_note(exp: Any) -> list[str]:
    """What the autoscalers serving a queued experiment's queue are doing about it (its page's
    "why it waits"): starting a machine, refusing one (and why), or stopped in error."""
    served = list(
        AutoscalerApp.objects.filter(served__queue_id=exp.queue_id).distinct().only("id", "name", "state", "error")
    )
    notes: list[str] = []
    since = timezone.now() - timedelta(seconds=REPEAT_QUIET_S)
    for app in served:
        if app.state == AppState.ERROR:
            notes.append(f"autoscaler {app.name} is stopped by an error: {app.error}")
            continue
        if app.state != AppState.RUNNING:
            continue
        starting = Instance.objects.filter(
            app=app, state__in=(InstanceState.REQUESTED, InstanceState.PENDING, InstanceState.BOOTING)
        ).count()
        if starting:
            notes.append(f"autoscaler {app.name} is starting {starting} machine{'s' if starting != 1 else ''}")
        refusal = Decision.objects.filter(app=app, kind="refuse", at__gte=since).order_by("-at").first()
        if refusal is not None:
            notes.append(f"autoscaler {app.name}: {refusal.message}")
    return notes


def reconcile_due(now: datetime | None = None) -> int:
    """One pass for every app whose polling interval has passed (beat, every AUTOSCALER_TICK_S),
    and for stopped apps that still have machines (to drain them)."""
    now = now or timezone.now()
    apps = AutoscalerApp.objects.filter(Q(state=AppState.RUNNING) | Q(instances__state__in=FOOTPRINT)).distinct()
    done = 0
    for app in apps.only("id", "polling_interval_s", "last_reconciled_at"):
        due = app.last_reconciled_at is None or (now - app.last_reconciled_at).total_seconds() >= app.polling_interval_s
        if due:
            reconcile(app.pk)
            done += 1
    return done

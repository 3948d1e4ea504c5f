"""Autoscaler speed: enqueue → launch through the real loop, and one reconcile at scale.

1. Enqueue → launch. A fresh PostgreSQL database, Redis, a real celery worker, and moto's EC2
   server in this process. One AWS app serves a queue. Each round enqueues one experiment (the
   service the API calls) and waits until moto has the machine: the enqueue's wake-up goes through
   celery to the loop, which lists the app's machines and calls RunInstances. The baseline, in
   the same run: a bare RunInstances against the same moto (the floor any loop pays).
2. One reconcile of one app among 50 apps x 20 resources, with 10,000 waiting experiments (and
   again with 1,000: the query count must not grow with the number waiting). Every resource is at
   its max instances, so the pass decides and refuses but launches nothing.

    .venv/bin/python bench/autoscale.py [--rounds 20] [--waiting 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PY, ROOT, machine, percentile, prepared_database, services


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--resources", type=int, default=20)
    args = parser.parse_args()
    with services() as svc:
        env, _ = prepared_database(svc, "muster_bench_autoscale", AUTOSCALER_TICK_S="3600")
        os.environ.update(env)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        import django  # noqa: PLC0415 - after the environment names the database

        django.setup()
        from moto.server import ThreadedMotoServer  # noqa: PLC0415

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        celery = subprocess.Popen(
            [PY, "-m", "celery", "-A", "orchestration", "worker", "--loglevel", "WARNING", "--concurrency", "2",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env={**os.environ}, start_new_session=True,
        )  # fmt: skip
        try:
            launch_ms, floor_ms = enqueue_to_launch(f"http://{host}:{port}", args.rounds)
            reconcile_ms, queries_big = reconcile_at_scale(args.apps, args.resources, args.waiting)
            _, queries_small = reconcile_at_scale(args.apps, args.resources, args.waiting // 10, fresh=False)
        finally:
            celery.terminate()
            celery.wait(timeout=30)
            moto.stop()
    p50, p95 = percentile(launch_ms, 50), percentile(launch_ms, 95)
    floor = percentile(floor_ms, 50)
    print(f"machine: {machine()}")
    print(f"enqueue -> launch over {len(launch_ms)} rounds: p50 {p50:.0f} ms, p95 {p95:.0f} ms; "
          f"a bare RunInstances against the same moto: p50 {floor:.1f} ms (ratio {p50 / floor:.1f})")  # fmt: skip
    print(f"one reconcile of 1 app among {args.apps} apps x {args.resources} resources: {reconcile_ms:.0f} ms, "
          f"{queries_big} queries with {args.waiting:,} waiting, {queries_small} with {args.waiting // 10:,}")  # fmt: skip
    print(f"RESULT autoscale enqueue_to_launch_p50_ms={p50:.0f} enqueue_to_launch_p95_ms={p95:.0f} "
          f"reconcile_ms={reconcile_ms:.0f} reconcile_queries={queries_big}")  # fmt: skip


def enqueue_to_launch(moto_url: str, rounds: int) -> tuple[list[float], list[float]]:
    from django.contrib.auth.models import User  # noqa: PLC0415

    from accounts.actor import SYSTEM, actor_for_user  # noqa: PLC0415
    from autoscalers import services  # noqa: PLC0415
    from autoscalers.providers.aws import AwsProvider  # noqa: PLC0415
    from autoscalers.serializers import AppWriteSerializer  # noqa: PLC0415
    from experiments.services import experiment_submit  # noqa: PLC0415
    from queues.services import queue_create  # noqa: PLC0415

    admin = actor_for_user(User.objects.get(username="admin"))
    queue_create(actor=SYSTEM, name="bench-gpu")
    body = {
        "name": "bench", "provider": "aws", "workers_prefix": "bench", "polling_interval_s": 3600,
        "settings": {"region": "us-east-1", "endpoint_url": moto_url},
        "resources": [{"name": "g5", "instance_type": "g5.xlarge", "gpu_count": 1, "max_instances": rounds + 5,
                       "machine_image": "ami-12c6146b"}],
        "queues": {"bench-gpu": ["g5"]},
    }  # fmt: skip
    ser = AppWriteSerializer(data=body)
    ser.is_valid(raise_exception=True)
    app = services.app_save(actor=admin, data=dict(ser.validated_data))
    services.app_set_state(actor=admin, app_id=app.pk, state="running")
    ec2 = AwsProvider("bench-floor", {"region": "us-east-1", "endpoint_url": moto_url}, {}).ec2  # a bare EC2 client

    def count() -> int:
        return sum(len(r["Instances"]) for r in ec2.describe_instances()["Reservations"])

    floor = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1)
        floor.append((time.perf_counter() - t0) * 1000)
    times = []
    for i in range(-1, rounds):  # round -1 warms the celery worker (its first task imports the app) and is not counted
        before = count()
        t0 = time.perf_counter()
        experiment_submit(
            actor=admin, spec={"name": f"train-{i}", "command": ["true"], "gpus": 1}, queue_name="bench-gpu"
        )
        deadline = time.monotonic() + 30
        while count() == before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"round {i}: no launch within 30 s (is the celery worker up?)")
            time.sleep(0.005)
        if i >= 0:
            times.append((time.perf_counter() - t0) * 1000)
    return times, floor


def reconcile_at_scale(apps: int, resources: int, waiting: int, *, fresh: bool = True) -> tuple[float, int]:
    from django.contrib.auth.models import User  # noqa: PLC0415
    from django.db import connection  # noqa: PLC0415
    from django.test.utils import CaptureQueriesContext  # noqa: PLC0415
    from django.utils import timezone  # noqa: PLC0415

    from autoscalers import services  # noqa: PLC0415
    from autoscalers.models import AppState, AutoscalerApp, Resource, ServedQueue  # noqa: PLC0415
    from experiments.models import Experiment, Status  # noqa: PLC0415
    from queues.models import Queue, QueueEntry  # noqa: PLC0415

    owner = User.objects.get(username="admin")
    now = timezone.now()
    if fresh:
        queues = Queue.objects.bulk_create([Queue(id=f"{i:032x}", name=f"scale-{i}") for i in range(apps)])
        for a in range(apps):
            app = AutoscalerApp.objects.create(
                name=f"scale-{a}", provider="local", state=AppState.RUNNING, owner=owner, workers_prefix=f"scale{a}"
            )
            made = Resource.objects.bulk_create(
                [
                    Resource(app=app, name=f"r{r}", instance_type="local", cpus=1 + r, max_instances=0)
                    for r in range(resources)
                ]
            )
            ServedQueue.objects.bulk_create(
                [ServedQueue(app=app, queue=queues[a], resource=r, order=i) for i, r in enumerate(made)]
            )
    target = AutoscalerApp.objects.get(name="scale-0")
    queue = Queue.objects.get(name="scale-0")
    QueueEntry.objects.filter(queue=queue).delete()
    Experiment.objects.filter(queue=queue).delete()
    exps = Experiment.objects.bulk_create(
        [
            Experiment(name=f"w{i}", owner=owner, command=["true"], cpus=1 + i % 4, status=Status.QUEUED, queue=queue)
            for i in range(waiting)
        ]
    )
    QueueEntry.objects.bulk_create(
        [
            QueueEntry(queue=queue, experiment=e, priority=0, position=i, cpus=e.cpus, added_at=now)
            for i, e in enumerate(exps)
        ],
        batch_size=2000,
    )
    services.reconcile(target.pk)  # warm
    AutoscalerApp.objects.filter(pk=target.pk).update(last_reconciled_at=None)
    with CaptureQueriesContext(connection) as ctx:
        t0 = time.perf_counter()
        services.reconcile(target.pk)
        elapsed = (time.perf_counter() - t0) * 1000
    return elapsed, len(ctx.captured_queries)


if __name__ == "__main__":
    main()

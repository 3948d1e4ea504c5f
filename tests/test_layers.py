"""Layering rules: state changes only in services; the agent and engine stay free of Django."""

from __future__ import annotations

import ast
import inspect
import tomllib
from pathlib import Path

from django.conf import settings

from experiments.fleet import Fleet, fleet
from workers.services import WorkersFleet

ROOT = Path(__file__).resolve().parent.parent
# Every Django app of the project: a top-level folder with an apps.py.
APPS = tuple(sorted(p.parent.name for p in ROOT.glob("*/apps.py")))
WRITE_METHODS = {"save", "delete", "create", "bulk_create", "bulk_update", "get_or_create", "update_or_create"}
QUERYSET_HINTS = {"objects", "filter", "exclude", "all", "select_for_update", "_default_manager"}


def _thin_modules() -> list[Path]:
    """Every module that handles a request or a job: views, pages, APIs, the plain claim, report,
    snapshot and stats views, the fast path, admin, tasks, management commands, the ClearML facade."""
    found: list[Path] = []
    for app in APPS:
        base = ROOT / app
        if not base.exists():
            continue
        for path in base.rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            name = path.name
            if (
                name.startswith(("views", "api", "admin", "tasks", "pages", "metrics", "fastpath"))
                or name.endswith(("_view.py", "_api.py"))
                or "/management/commands/" in rel
                or rel.startswith("clearml_api/")
            ) and "migrations" not in rel:
                found.append(path)
            elif "migrations" not in rel and _takes_requests(path.read_text()):
                found.append(path)  # request plumbing: authentication, permissions, middleware
    return found


def _takes_requests(source: str) -> bool:
    """A view function (it takes the request) or a DRF view class."""
    return "request: HttpRequest" in source or "request: Request" in source or "(APIView)" in source


def _receiver_chain(node: ast.AST) -> set[str]:
    names: set[str] = set()
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
            node = node.value
        else:
            if isinstance(node, ast.Name):
                names.add(node.id)
            return names


def direct_writes(source: str) -> list[str]:
    """Calls that write models: .save()/.delete()/.create()… and queryset .update()."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            chain = _receiver_chain(node.func.value)
            if method in WRITE_METHODS or (method == "update" and chain & QUERYSET_HINTS):
                hits.append(f"line {node.lineno}: .{method}()")
    return hits


def test_the_checker_catches_direct_writes() -> None:
    bad = "obj.save()\nQueue.objects.filter(pk=1).update(paused=True)\nX.objects.create()\nq.delete()\n"
    assert len(direct_writes(bad)) == 4
    assert direct_writes("data.update(x=1)\nservices.queue_delete(actor=a, queue_id=q)\n") == []


def test_thin_layers_call_services_instead_of_writing_models() -> None:
    modules = _thin_modules()
    assert modules, "no views/api/admin/tasks modules found"
    offenders = {str(path.relative_to(ROOT)): hits for path in modules if (hits := direct_writes(path.read_text()))}
    assert offenders == {}, f"write through a service instead: {offenders}"


def test_the_apps_are_the_installed_ones() -> None:
    assert set(APPS) == {app for app in settings.INSTALLED_APPS if (ROOT / app / "apps.py").exists()}


def test_every_module_that_handles_requests_is_checked() -> None:
    thin = {str(p.relative_to(ROOT)) for p in _thin_modules()}
    for module in (
        "workers/claim_view.py", "workers/report_view.py", "experiments/snapshot_view.py", "workers/stats_api.py",
        "orchestration/fastpath.py", "orchestration/middleware.py", "accounts/authentication.py",
        "clearml_api/transport.py", "dashboard/metrics.py",
    ):  # fmt: skip
        assert module in thin


def test_services_open_transactions_with_the_one_retrying_helper() -> None:
    """Every service's transaction is core.db.atomic (retried on a deadlock when outermost);
    transaction.atomic appears only as a savepoint inside one (to catch an IntegrityError)."""
    offenders = [
        str(path.relative_to(ROOT))
        for app in APPS
        for path in (ROOT / app).glob("services.py")
        if "@transaction.atomic" in path.read_text()
    ]
    assert offenders == [], f"decorate with core.db.atomic instead: {offenders}"


FEATURE_APPS = ("workers", "experiments", "queues")


def _feature_contract() -> dict[str, object]:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["name"].startswith("The feature apps"))


def test_every_module_of_the_feature_apps_has_a_layer() -> None:
    """A new module in workers/, experiments/ or queues/ must take a place in the contract, or
    import-linter would never check it."""
    layers = _feature_contract()["layers"]
    assert isinstance(layers, list)
    named = [m.strip() for layer in layers for m in layer.split(":")]
    assert len(named) == len(set(named)), "a module is named in two layers"
    modules = {
        f"{app}.{path.stem}" for app in FEATURE_APPS for path in (ROOT / app).glob("*.py") if path.stem != "__init__"
    }
    assert modules - set(named) == set(), "give these modules a layer in pyproject.toml"
    assert set(named) - modules == set(), "these modules in the contract do not exist"


def test_the_domain_layers_run_workers_experiments_queues() -> None:
    layers = _feature_contract()["layers"]
    assert isinstance(layers, list)
    firsts = [layer.split(":")[0].strip().split(".")[0] for layer in layers[1:]]
    assert firsts == ["workers", "experiments", "queues"]
    for layer, app in zip(layers[1:], firsts, strict=True):
        assert {m.strip().split(".")[0] for m in layer.split(":")} == {app}, "a domain layer holds one app"


def test_the_experiment_lifecycle_asks_the_workers_app_for_its_fleet() -> None:
    provider = fleet()
    assert isinstance(provider, WorkersFleet)
    wanted = {n for n in vars(Fleet) if not n.startswith("_")}
    assert wanted == {"listens", "runs", "release"}
    for name in wanted:
        assert inspect.signature(getattr(Fleet, name)) == inspect.signature(getattr(WorkersFleet, name)), name

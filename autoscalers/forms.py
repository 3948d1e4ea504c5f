"""The app's form, field by field, grouped as ClearML groups its apps' (general, credentials, the
cloud's settings, machines, money, compute resources, queues). It reads into the same shape as
the JSON editor and the API (AppWriteSerializer validates all three), and writes the form back
from that shape. Credentials are write-only: their inputs start empty, and empty keeps them."""

from __future__ import annotations

import json
from typing import Any

from django.http import QueryDict

LIST_SETTINGS = {"subnets", "security_groups", "scopes"}
PAIR_SETTINGS = {"tags", "metadata", "global_metadata"}
JSON_SETTINGS = {"launch_spec"}
TEXT_SETTINGS = {
    "aws": ("region", "key_pair", "iam_instance_profile", "ebs_device", "ebs_type"),
    "gcp": ("project", "zone", "subnet"),
}
SETTING_FIELDS = {
    "aws": ("region", "subnets", "security_groups", "key_pair", "iam_instance_profile", "tags", "ebs_device",
            "ebs_type", "launch_spec"),
    "gcp": ("project", "zone", "subnet", "scopes", "metadata", "global_metadata"),
    "local": (),
}  # fmt: skip
CREDENTIAL_FIELDS = {
    "aws": ("access_key_id", "secret_access_key"),
    "gcp": ("service_account_json",),
    "local": (),
}
RESOURCE_FIELDS = (
    "name", "instance_type", "cpu_mode", "gpu_type", "gpu_count", "cpus", "memory_mb", "spot", "spot_rollback_after_s",
    "spot_blackout_s", "machine_image", "disk_gb", "max_instances", "hourly_price_usd", "min_idle",
)  # fmt: skip
RESOURCE_BOOLS = {"cpu_mode", "spot"}
RESOURCE_ROWS_MIN = 3
NUMBERS = ("polling_interval_s", "max_idle_s", "max_spinup_s")


class FormError(ValueError):
    """A field the form could not read (the serializer checks the rest)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _pairs(text: str, field: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.replace(",", "\n").splitlines():
        if not line.strip():
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise FormError(field, f"{field}: write KEY=VALUE, not {line.strip()!r}")
        out[key.strip()] = value.strip()
    return out


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def _json(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise FormError(field, f"{field}: not JSON ({e})") from None


def read(post: QueryDict) -> dict[str, Any]:
    """The posted form as the API's body; FormError for what cannot even be read."""
    provider = post.get("provider", "")
    body: dict[str, Any] = {
        "name": post.get("name", "").strip(),
        "provider": provider,
        "workers_prefix": post.get("workers_prefix", "").strip(),
        "init_script": post.get("init_script", ""),
        "extra_agent_config": post.get("extra_agent_config", ""),
        "container_mode": post.get("container_mode") == "on",
        "default_container_image": post.get("default_container_image", "").strip(),
        "warn_duplicate_runs": post.get("warn_duplicate_runs") == "on",
        "environment": _pairs(post.get("environment", ""), "environment"),
        "files": _json(post.get("files") or "{}", "files"),
        "cap_day_usd": post.get("cap_day_usd", "").strip() or None,
        "cap_month_usd": post.get("cap_month_usd", "").strip() or None,
    }
    for name in NUMBERS:
        number = post.get(name, "").strip()
        if number:
            body[name] = number
    settings: dict[str, Any] = {}
    for key in SETTING_FIELDS.get(provider, ()):
        raw = post.get(f"settings.{key}", "")
        if not raw.strip():
            continue
        if key in LIST_SETTINGS:
            settings[key] = _list(raw)
        elif key in PAIR_SETTINGS:
            settings[key] = _pairs(raw, key)
        elif key in JSON_SETTINGS:
            settings[key] = _json(raw, key)
        else:
            settings[key] = raw.strip()
    body["settings"] = settings
    credentials = {
        key: post.get(f"credentials.{key}", "")
        for key in (*CREDENTIAL_FIELDS.get(provider, ()), "git_user", "git_password")
        if post.get(f"credentials.{key}", "").strip()
    }
    if credentials:
        body["credentials"] = credentials
    resources = []
    for i in range(int(post.get("resource_rows") or 0)):
        row = {f: post.get(f"resources.{i}.{f}", "") for f in RESOURCE_FIELDS}
        if not row["name"].strip() and not row["instance_type"].strip():
            continue  # an empty row
        resource: dict[str, Any] = {}
        for f, value in row.items():
            if f in RESOURCE_BOOLS:
                resource[f] = value == "on"
            elif value.strip():
                resource[f] = value.strip()
        resources.append(resource)
    body["resources"] = resources
    queues: dict[str, list[str]] = {}
    for i in range(int(post.get("queue_rows") or 0)):
        queue = post.get(f"queues.{i}.queue", "").strip()
        order = _list(post.get(f"queues.{i}.resources", ""))
        if queue:
            queues[queue] = order
    body["queues"] = queues
    return body


def initial(data: dict[str, Any]) -> dict[str, Any]:
    """The form's values from the API's shape (an export, or what was posted), as text."""
    settings = data.get("settings") or {}
    shown: dict[str, Any] = {
        k: data.get(k, "") if data.get(k) is not None else ""
        for k in ("name", "provider", "workers_prefix", "init_script", "extra_agent_config",
                  "default_container_image", "cap_day_usd", "cap_month_usd", *NUMBERS)
    }  # fmt: skip
    shown["container_mode"] = bool(data.get("container_mode"))
    shown["warn_duplicate_runs"] = data.get("warn_duplicate_runs", True)
    shown["environment"] = "\n".join(f"{k}={v}" for k, v in (data.get("environment") or {}).items())
    shown["files"] = json.dumps(data.get("files") or {}, indent=2) if data.get("files") else ""
    shown["settings"] = {}
    for key, value in settings.items():
        if key in LIST_SETTINGS:
            shown["settings"][key] = ", ".join(value)
        elif key in PAIR_SETTINGS:
            shown["settings"][key] = "\n".join(f"{k}={v}" for k, v in value.items())
        elif key in JSON_SETTINGS:
            shown["settings"][key] = json.dumps(value, indent=2)
        else:
            shown["settings"][key] = value
    rows = [dict(r) for r in data.get("resources") or []]
    rows += [{} for _ in range(max(RESOURCE_ROWS_MIN - len(rows), 1))]
    shown["resources"] = rows
    queue_rows = [{"queue": q, "resources": ", ".join(order)} for q, order in (data.get("queues") or {}).items()]
    queue_rows += [{} for _ in range(max(3 - len(queue_rows), 1))]
    shown["queues"] = queue_rows
    return shown

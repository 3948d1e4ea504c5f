"""GCP Compute Engine through google-api-python-client (compute v1, its shipped discovery
document). One insert per machine, idempotent twice over: a name derived from the instance row
(unique per zone: a repeat is answered "already exists") and a requestId derived from it.
A Spot machine is deleted when preempted; the zone's `compute.instances.preempted` operations
say which, so its run goes back to its queue. reference/autoscaling.md §3 has the mechanics.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from typing import Any

from google.auth.credentials import AnonymousCredentials
from googleapiclient.discovery import build
from googleapiclient.errors import HttpError

from autoscalers.providers.base import (
    TAG_APP,
    TAG_INSTANCE,
    TAG_MANAGED,
    CloudError,
    CloudMachine,
    ErrorClass,
    LaunchSpec,
)

NAMESPACE = uuid.UUID("6f1c7e0a-54a3-4c2e-9a57-5b6f2a0d7c11")
CAPACITY_CODES = {
    "ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "UNSUPPORTED_OPERATION",
    "insufficientCapacity", "RESOURCE_NOT_READY", "RESOURCE_OPERATION_RATE_EXCEEDED",
}  # fmt: skip
QUOTA_CODES = {"QUOTA_EXCEEDED", "quotaExceeded"}
THROTTLE_REASONS = {"rateLimitExceeded", "userRateLimitExceeded"}
RUNNING = {"PROVISIONING", "STAGING", "RUNNING", "REPAIRING", "PENDING"}
RETRIES = 3  # execute(num_retries): throttling, 429 and 5xx, with the client's backoff


def _reason(error: HttpError) -> tuple[str, str]:
    try:
        body = json.loads(error.content.decode())
        first = (body.get("error", {}).get("errors") or [{}])[0]
        return str(first.get("reason", "")), str(body.get("error", {}).get("message", "")) or str(error)
    except (ValueError, AttributeError):
        return "", str(error)


def classify_http(error: HttpError) -> CloudError:
    status = int(error.resp.status)
    reason, message = _reason(error)
    if reason in THROTTLE_REASONS or status == 429:
        kind = ErrorClass.THROTTLED
    elif reason in QUOTA_CODES:
        kind = ErrorClass.QUOTA
    elif status in {401, 403}:
        kind = ErrorClass.PERMISSION
    elif status >= 500:
        kind = ErrorClass.TRANSIENT
    else:
        kind = ErrorClass.CONFIG
    return CloudError(kind, f"{status} {reason}: {message}".strip(), reason)


def classify_operation(errors: list[dict[str, Any]]) -> CloudError:
    first = errors[0] if errors else {}
    code, message = str(first.get("code", "")), str(first.get("message", "")) or "the operation failed"
    if code in CAPACITY_CODES:
        kind = ErrorClass.CAPACITY
    elif code in QUOTA_CODES:
        kind = ErrorClass.QUOTA
    elif "PERMISSION" in code:
        kind = ErrorClass.PERMISSION
    else:
        kind = ErrorClass.CONFIG
    return CloudError(kind, f"{code}: {message}", code)


class GcpProvider:
    def __init__(self, app_id: str, settings: dict[str, Any], credentials: dict[str, str]):
        self.app_id = app_id
        self.settings = settings
        self.project = str(settings["project"])
        self.zone = str(settings["zone"])
        options: dict[str, Any] = {}
        if settings.get("endpoint_url"):  # a private endpoint, or the tests' fake Compute Engine
            options["api_endpoint"] = str(settings["endpoint_url"])
        if credentials.get("service_account_json"):
            from google.oauth2 import service_account  # noqa: PLC0415 - only with a key

            creds: Any = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
                json.loads(credentials["service_account_json"]),
                scopes=["https://www.googleapis.com/auth/compute"],
            )
        elif settings.get("endpoint_url"):
            creds = AnonymousCredentials()  # type: ignore[no-untyped-call]
        else:
            import google.auth  # noqa: PLC0415 - the default service account of the server's host

            creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/compute"])
        self.compute = build(
            "compute", "v1", credentials=creds, static_discovery=True, client_options=options, cache_discovery=False
        )

    def _run(self, request: Any) -> Any:
        try:
            return request.execute(num_retries=RETRIES)
        except HttpError as e:
            raise classify_http(e) from e
        except OSError as e:
            raise CloudError(ErrorClass.TRANSIENT, f"{type(e).__name__}: {e}") from e

    def _body(self, spec: LaunchSpec) -> dict[str, Any]:
        z = self.zone
        labels = {TAG_MANAGED: "true", TAG_APP: self.app_id, TAG_INSTANCE: spec.instance_id}
        interface: dict[str, Any] = {"accessConfigs": [{"type": "ONE_TO_ONE_NAT"}]}
        subnet = str(self.settings.get("subnet") or "")
        if subnet:
            interface["subnetwork"] = subnet if "/" in subnet else f"regions/{z.rsplit('-', 1)[0]}/subnetworks/{subnet}"
        else:
            interface["network"] = "global/networks/default"
        metadata = {**dict(self.settings.get("global_metadata") or {}), **dict(self.settings.get("metadata") or {})}
        metadata["startup-script"] = spec.boot_script
        body: dict[str, Any] = {
            "name": spec.name,
            "machineType": f"zones/{z}/machineTypes/{spec.instance_type}",
            "disks": [{"boot": True, "autoDelete": True, "initializeParams": {
                "sourceImage": spec.machine_image or "projects/debian-cloud/global/images/family/debian-12",
                "diskSizeGb": str(spec.disk_gb)}}],
            "networkInterfaces": [interface],
            "labels": labels,
            "metadata": {"items": [{"key": k, "value": str(v)} for k, v in metadata.items()]},
            "scheduling": {"onHostMaintenance": "TERMINATE", "automaticRestart": False},
        }  # fmt: skip
        if spec.gpu_count:
            body["guestAccelerators"] = [
                {"acceleratorType": f"zones/{z}/acceleratorTypes/{spec.gpu_type}", "acceleratorCount": spec.gpu_count}
            ]
        if spec.spot:
            body["scheduling"] |= {"provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}
        scopes = list(self.settings.get("scopes") or [])
        if scopes:
            body["serviceAccounts"] = [{"email": "default", "scopes": scopes}]
        return body

    def launch(self, spec: LaunchSpec) -> str:
        request_id = str(uuid.uuid5(NAMESPACE, f"{spec.instance_id}:{'spot' if spec.spot else 'standard'}"))
        insert = self.compute.instances().insert(
            project=self.project, zone=self.zone, body=self._body(spec), requestId=request_id
        )
        try:
            operation = insert.execute(num_retries=RETRIES)
        except HttpError as e:
            if int(e.resp.status) == 409:  # this name exists: the launch happened before
                return spec.name
            raise classify_http(e) from e
        # Capacity and quota errors usually arrive in the operation: look once it is done (briefly;
        # a slow one is followed by the next pass, which sees the machine or its absence).
        deadline = time.monotonic() + 10
        while operation.get("status") != "DONE" and time.monotonic() < deadline:
            time.sleep(0.5)
            operation = self._run(
                self.compute.zoneOperations().get(project=self.project, zone=self.zone, operation=operation["name"])
            )
        errors = (operation.get("error") or {}).get("errors") or []
        if errors:
            raise classify_operation(errors)
        return spec.name

    def machines(self) -> list[CloudMachine]:
        out: list[CloudMachine] = []
        request = self.compute.instances().list(
            project=self.project, zone=self.zone, filter=f'labels.{TAG_APP} = "{self.app_id}"', maxResults=500
        )
        while request is not None:
            page = self._run(request)
            for inst in page.get("items", []):
                labels = inst.get("labels") or {}
                started = inst.get("lastStartTimestamp") or inst.get("creationTimestamp")
                out.append(CloudMachine(
                    cloud_id=str(inst["name"]),
                    instance_id=str(labels.get(TAG_INSTANCE, "")),
                    state="running" if inst.get("status") in RUNNING else "terminated",
                    launched_at=datetime.fromisoformat(started) if started else None,
                ))  # fmt: skip
            request = self.compute.instances().list_next(request, page)
        # Spot machines deleted by a preemption are gone from the list: the zone's operations say so.
        seen = {m.cloud_id for m in out}
        ops = self._run(self.compute.zoneOperations().list(
            project=self.project, zone=self.zone, filter='operationType = "compute.instances.preempted"'
        ))  # fmt: skip
        for op in ops.get("items", []):
            name = str(op.get("targetLink", "")).rsplit("/", 1)[-1]
            if name and name not in seen:
                out.append(CloudMachine(cloud_id=name, instance_id="", state="terminated", interrupted=True))
                seen.add(name)
        return out

    def terminate(self, cloud_id: str) -> None:
        try:
            self.compute.instances().delete(project=self.project, zone=self.zone, instance=cloud_id).execute(
                num_retries=RETRIES
            )
        except HttpError as e:
            if int(e.resp.status) == 404:
                return  # already gone
            raise classify_http(e) from e

    def console(self, cloud_id: str) -> str:
        answer = self._run(
            self.compute.instances().getSerialPortOutput(project=self.project, zone=self.zone, instance=cloud_id)
        )
        return str(answer.get("contents") or "")

"""AWS EC2 through boto3: one RunInstances per machine (MinCount = MaxCount = 1), made idempotent
twice over: our own tag with the instance row's id, looked up before every launch (what moto can
check), and a ClientToken derived from the row (what EC2 itself deduplicates).
reference/autoscaling.md §2 has the mechanics this follows.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, ReadTimeoutError

from autoscalers.providers.base import (
    TAG_APP,
    TAG_INSTANCE,
    TAG_MANAGED,
    CloudError,
    CloudMachine,
    ErrorClass,
    LaunchSpec,
)

CAPACITY_CODES = {
    "InsufficientInstanceCapacity", "InsufficientHostCapacity", "InsufficientReservedInstanceCapacity",
    "MaxSpotInstanceCountExceeded", "Unsupported", "SpotMaxPriceTooLow", "UnfulfillableCapacity",
    "InsufficientCapacity",
}  # fmt: skip
QUOTA_CODES = {"InstanceLimitExceeded", "VcpuLimitExceeded"}
PERMISSION_CODES = {
    "UnauthorizedOperation",
    "AccessDenied",
    "AuthFailure",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
}
THROTTLE_CODES = {"RequestLimitExceeded", "Throttling", "ThrottlingException", "EC2ThrottledException"}
TRANSIENT_CODES = {"InternalError", "Unavailable", "ServiceUnavailable", "RequestTimeout"}
GONE = ("shutting-down", "terminated")


def classify(error: Exception) -> CloudError:
    """An EC2 error as the loop's class, by its code (never by its HTTP status)."""
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        message = str(error.response.get("Error", {}).get("Message", "")) or code
        if code in CAPACITY_CODES:
            kind = ErrorClass.CAPACITY
        elif code in QUOTA_CODES:
            kind = ErrorClass.QUOTA
        elif code in PERMISSION_CODES:
            kind = ErrorClass.PERMISSION
        elif code in THROTTLE_CODES:
            kind = ErrorClass.THROTTLED
        elif code in TRANSIENT_CODES or int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)) >= 500:
            kind = ErrorClass.TRANSIENT
        else:
            kind = ErrorClass.CONFIG
        return CloudError(kind, f"{code}: {message}", code)
    if isinstance(error, (ReadTimeoutError, EndpointConnectionError, BotoCoreError)):
        return CloudError(ErrorClass.TRANSIENT, f"{type(error).__name__}: {error}")
    return CloudError(ErrorClass.TRANSIENT, str(error))


class AwsProvider:
    def __init__(
        self, app_id: str, settings: dict[str, Any], credentials: dict[str, str], endpoint_url: str | None = None
    ):
        self.app_id = app_id
        self.settings = settings
        kwargs: dict[str, Any] = {"region_name": settings.get("region") or "us-east-1"}
        if credentials.get("access_key_id"):  # else the IAM role of the server's host
            kwargs["aws_access_key_id"] = credentials["access_key_id"]
            kwargs["aws_secret_access_key"] = credentials.get("secret_access_key", "")
        config = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)
        self.ec2 = boto3.client("ec2", endpoint_url=endpoint_url or settings.get("endpoint_url") or None,
                                config=config, **kwargs)  # fmt: skip

    def _ours(self, *filters: dict[str, Any]) -> list[dict[str, Any]]:
        found = []
        paginator = self.ec2.get_paginator("describe_instances")
        base = [{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}, {"Name": f"tag:{TAG_APP}", "Values": [self.app_id]}]
        try:
            for page in paginator.paginate(Filters=[*base, *filters]):
                for reservation in page.get("Reservations", []):
                    found.extend(reservation.get("Instances", []))
        except (ClientError, BotoCoreError) as e:
            raise classify(e) from e
        return found

    def launch(self, spec: LaunchSpec) -> str:
        # A launch whose answer was lost left its machine: find it by our tag before asking again.
        for inst in self._ours({"Name": f"tag:{TAG_INSTANCE}", "Values": [spec.instance_id]}):
            if inst["State"]["Name"] not in GONE:
                return str(inst["InstanceId"])
        tags = [
            {"Key": TAG_MANAGED, "Value": "true"},
            {"Key": TAG_APP, "Value": self.app_id},
            {"Key": TAG_INSTANCE, "Value": spec.instance_id},
            {"Key": "Name", "Value": spec.name},
            *({"Key": str(k), "Value": str(v)} for k, v in dict(self.settings.get("tags") or {}).items()),
        ]
        params: dict[str, Any] = {
            "ImageId": spec.machine_image,
            "InstanceType": spec.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "UserData": spec.boot_script,
            "ClientToken": f"muster-{spec.instance_id}-{'spot' if spec.spot else 'od'}",
            "InstanceInitiatedShutdownBehavior": "terminate",  # the boot script's power-off ends billing
            "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 2},
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
            "BlockDeviceMappings": [{
                "DeviceName": str(self.settings.get("ebs_device") or "/dev/sda1"),
                "Ebs": {"VolumeSize": spec.disk_gb, "VolumeType": str(self.settings.get("ebs_type") or "gp3"),
                        "DeleteOnTermination": True},
            }],
        }  # fmt: skip
        if spec.spot:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"},
            }
        if self.settings.get("key_pair"):
            params["KeyName"] = self.settings["key_pair"]
        if self.settings.get("security_groups"):
            params["SecurityGroupIds"] = list(self.settings["security_groups"])
        if self.settings.get("iam_instance_profile"):
            profile = str(self.settings["iam_instance_profile"])
            params["IamInstanceProfile"] = {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}
        if self.settings.get("launch_spec"):
            params.update(json.loads(str(self.settings["launch_spec"])) if isinstance(self.settings["launch_spec"], str)
                          else dict(self.settings["launch_spec"]))  # fmt: skip
        subnets = list(self.settings.get("subnets") or []) or [None]
        last: CloudError | None = None
        for subnet in subnets:  # tried in order: a full subnet or zone goes to the next
            call = dict(params)
            if subnet:
                call["SubnetId"] = subnet
                call["ClientToken"] = f"{params['ClientToken']}-{subnet}"[:64]
            try:
                answer = self.ec2.run_instances(**call)
            except (ClientError, BotoCoreError) as e:
                last = classify(e)
                if last.kind == ErrorClass.CAPACITY:
                    continue
                raise last from e
            return str(answer["Instances"][0]["InstanceId"])
        assert last is not None
        raise last

    def machines(self) -> list[CloudMachine]:
        out = []
        for inst in self._ours():
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            reason = str(inst.get("StateReason", {}).get("Code", ""))
            launched = inst.get("LaunchTime")
            if isinstance(launched, datetime) and launched.tzinfo is None:
                launched = launched.replace(tzinfo=UTC)
            out.append(
                CloudMachine(
                    cloud_id=str(inst["InstanceId"]),
                    instance_id=tags.get(TAG_INSTANCE, ""),
                    state=str(inst["State"]["Name"]),
                    launched_at=launched,
                    interrupted=reason.startswith("Server.SpotInstanceTermination"),
                )
            )
        return out

    def terminate(self, cloud_id: str) -> None:
        try:
            self.ec2.terminate_instances(InstanceIds=[cloud_id])
        except ClientError as e:
            if str(e.response.get("Error", {}).get("Code", "")).startswith("InvalidInstanceID"):
                return  # already gone
            raise classify(e) from e
        except BotoCoreError as e:
            raise classify(e) from e

    def console(self, cloud_id: str) -> str:
        try:
            answer = self.ec2.get_console_output(InstanceId=cloud_id, Latest=True)
        except (ClientError, BotoCoreError) as e:
            raise classify(e) from e
        return str(answer.get("Output") or "")

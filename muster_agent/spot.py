"""The cloud's notice that it is taking this machine back (a Spot or preemptible VM), read from
the machine's metadata server: EC2 gives about two minutes (`spot/instance-action`, IMDSv2),
GCE about thirty seconds (`instance/preempted`). When it comes, the agent stops its runs as
`interrupted` (the server puts them back at the front of their queues without using a retry)
and reports their end while it still can.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

log = logging.getLogger("muster.agent")

BASES = {"aws": "http://169.254.169.254", "gcp": "http://metadata.google.internal"}
TIMEOUT_S = 2.0


class SpotWatch:
    def __init__(self, cloud: str, base_url: str | None = None):
        if cloud not in BASES:
            raise ValueError(f"spot notices come from aws or gcp, not {cloud!r}")
        self.cloud = cloud
        self.base = (base_url or BASES[cloud]).rstrip("/")

    def _get(self, path: str, headers: dict[str, str]) -> tuple[int, str]:
        request = urllib.request.Request(self.base + path, headers=headers)  # noqa: S310 - a fixed metadata URL
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:  # noqa: S310
                return int(answer.status), answer.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return int(e.code), ""

    def notice(self) -> str | None:
        """What the cloud says it will do (a line for the log), or None when it says nothing."""
        try:
            if self.cloud == "aws":
                token_request = urllib.request.Request(  # noqa: S310 - IMDSv2's session token
                    self.base + "/latest/api/token", method="PUT",
                    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
                )  # fmt: skip
                with urllib.request.urlopen(token_request, timeout=TIMEOUT_S) as answer:  # noqa: S310
                    token = answer.read().decode()
                status, body = self._get("/latest/meta-data/spot/instance-action", {"X-aws-ec2-metadata-token": token})
                if status != 200:
                    return None
                action = json.loads(body) if body.strip().startswith("{") else {"action": body.strip()}
                return f"EC2 will {action.get('action', 'stop')} this spot instance at {action.get('time', 'soon')}"
            status, body = self._get("/computeMetadata/v1/instance/preempted", {"Metadata-Flavor": "Google"})
            return "GCE is preempting this machine" if status == 200 and body.strip().upper() == "TRUE" else None
        except (OSError, ValueError) as e:  # no metadata server (not a cloud machine), or a bad answer
            log.debug("no spot notice to read: %s", e)
            return None

"""The URL map the OpenAPI schema is generated from: the real one, with the claim documented.

The claim is served by a plain async view (workers/claim_view.py) that drf-spectacular
cannot describe; WorkerClaimView carries its contract for the schema.
"""

from typing import Any

from django.urls import URLPattern, URLResolver, path

from orchestration import urls
from workers.api import WorkerClaimView


def _swap(patterns: list[Any]) -> list[URLPattern | URLResolver]:
    out: list[URLPattern | URLResolver] = []
    for p in patterns:
        if isinstance(p, URLPattern) and p.name == "worker-claim":
            out.append(path(str(p.pattern), WorkerClaimView.as_view(), name="worker-claim"))
        elif isinstance(p, URLResolver):
            out.append(URLResolver(p.pattern, _swap(list(p.url_patterns)), p.default_kwargs, p.app_name, p.namespace))
        else:
            out.append(p)
    return out


urlpatterns = _swap(list(urls.urlpatterns))

"""The URL map the OpenAPI schema is generated from: the real one, with the plain views documented.

The claim (workers/claim_view.py, async) and the report (workers/report_view.py) are plain
Django views that drf-spectacular cannot describe; WorkerClaimView and WorkerReportView
carry their contracts for the schema.
"""

from typing import Any

from django.urls import URLPattern, URLResolver, path

from orchestration import urls
from workers.api import WorkerClaimView, WorkerReportView

DOCUMENTED = {"worker-claim": WorkerClaimView, "worker-report": WorkerReportView}


def _swap(patterns: list[Any]) -> list[URLPattern | URLResolver]:
    out: list[URLPattern | URLResolver] = []
    for p in patterns:
        if isinstance(p, URLPattern) and p.name in DOCUMENTED:
            out.append(path(str(p.pattern), DOCUMENTED[p.name].as_view(), name=p.name))
        elif isinstance(p, URLResolver):
            out.append(URLResolver(p.pattern, _swap(list(p.url_patterns)), p.default_kwargs, p.app_name, p.namespace))
        else:
            out.append(p)
    return out


urlpatterns = _swap(list(urls.urlpatterns))

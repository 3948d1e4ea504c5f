"""URL map: the REST API under /api/v1/, its schema, health checks and the admin."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import SimpleRouter

from accounts import api as accounts_api
from accounts.throttle import throttled_login
from autoscalers.api import AutoscalerViewSet
from clearml_api.transport import dispatch as clearml_dispatch
from dashboard.metrics import metrics
from experiments.api import (
    AttemptFinishView,
    AttemptLogsView,
    AttemptProgressView,
    AttemptStartView,
    ExperimentViewSet,
)
from experiments.snapshot_view import snapshot_view
from orchestration import views
from queues.api import QueueViewSet
from workers.api import WorkerDetailView, WorkerListView
from workers.claim_view import claim_view
from workers.report_view import report_view
from workers.stats_api import ExperimentStatsView, FleetStatsView, QueueStatsView, WorkerStatsView

router = SimpleRouter()
router.register("experiments", ExperimentViewSet, basename="experiment")
router.register("queues", QueueViewSet, basename="queue")
router.register("autoscalers", AutoscalerViewSet, basename="autoscaler")

WORKER = "workers/<str:name>/"
ATTEMPT = "attempts/<str:attempt_id>/"

api_v1 = [
    *router.urls,
    path("workers/", WorkerListView.as_view(), name="worker-list"),
    path(WORKER, WorkerDetailView.as_view(), name="worker-detail"),
    path(WORKER + "claim/", claim_view, name="worker-claim"),
    path(WORKER + "report/", report_view, name="worker-report"),
    path(WORKER + "stats/", WorkerStatsView.as_view(), name="worker-stats"),
    path("queues/<str:pk>/stats/", QueueStatsView.as_view(), name="queue-stats"),
    path("experiments/<str:pk>/stats/", ExperimentStatsView.as_view(), name="experiment-stats"),
    path("stats/fleet/", FleetStatsView.as_view(), name="fleet-stats"),
    path("snapshots/<str:sha256>/", snapshot_view, name="snapshot-detail"),
    path(ATTEMPT + "start/", AttemptStartView.as_view(), name="attempt-start"),
    path(ATTEMPT + "logs/", AttemptLogsView.as_view(), name="attempt-logs"),
    path(ATTEMPT + "progress/", AttemptProgressView.as_view(), name="attempt-progress"),
    path(ATTEMPT + "finish/", AttemptFinishView.as_view(), name="attempt-finish"),
    path("keys/", accounts_api.ApiKeyListView.as_view(), name="key-list"),
    path("keys/<str:access_key>/", accounts_api.ApiKeyDetailView.as_view(), name="key-detail"),
    path("audit/", accounts_api.AuditListView.as_view(), name="audit-list"),
    path("secrets/", accounts_api.SecretListView.as_view(), name="secret-list"),
    path("secrets/<str:name>/", accounts_api.SecretDetailView.as_view(), name="secret-detail"),
    path("auth/login/", accounts_api.LoginView.as_view(), name="auth-login"),
]

admin.site.login = throttled_login(admin.site.login)  # type: ignore[method-assign]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves its set-up script as a file: no inline script, as the CSP requires.
    path(
        "api/docs/",
        SpectacularSwaggerSplitView.as_view(url_name="schema", template_name="api_docs.html"),
        name="api-docs",
    ),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    re_path(r"^clearml/(?P<path>.*)$", clearml_dispatch, name="clearml"),
    path("", include("orchestration.urls_pages")),
]

handler400 = "orchestration.views.bad_request"
handler404 = "orchestration.views.not_found"
handler500 = "orchestration.views.server_error"

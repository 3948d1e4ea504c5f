"""URL map of the web pages (server-rendered, HTMX partials under each page's path)."""

from django.urls import path

from accounts import pages as accounts
from actions import pages as actions
from autoscalers import pages as autoscalers
from experiments import pages as experiments
from orchestration import views as shell
from queues import pages as queues
from workers import pages as workers

app_name = "pages"

Q = "orchestration/queues/<str:pk>/"
W = "orchestration/workers/<str:name>/"
X = "experiments/<str:pk>/"
A = "orchestration/autoscalers/<str:pk>/"

urlpatterns = [
    path("", shell.home, name="home"),
    path("login/", accounts.login, name="login"),
    path("logout/", accounts.logout, name="logout"),
    path("settings/", accounts.settings_page, name="settings"),
    path("settings/keys/", accounts.key_create, name="key-create"),
    path("settings/keys/<str:access_key>/revoke/", accounts.key_revoke, name="key-revoke"),
    path("settings/secrets/", accounts.secret_save, name="secret-save"),
    path("settings/secrets/<str:name>/delete/", accounts.secret_remove, name="secret-delete"),
    path("actions/<int:pk>/run/", actions.custom_action, name="custom-action"),
    # WORKERS
    path("orchestration/workers/", workers.workers_page, name="workers"),
    path("orchestration/workers/rows/", workers.worker_rows, name="worker-rows"),
    path("orchestration/graphs/workers/", workers.graph_workers, name="graph-workers"),
    path("orchestration/graphs/queues/", workers.graph_queues, name="graph-queues"),
    path(W + "panel/", workers.worker_panel, name="worker-panel"),
    path(W + "queues/", workers.worker_set_queues, name="worker-queues"),
    path(W + "drain/", workers.worker_drain, name="worker-drain"),
    # QUEUES
    path("orchestration/queues/", queues.queues_page, name="queues"),
    path("orchestration/queues/rows/", queues.queue_rows, name="queue-rows"),
    path("orchestration/queues/new/", queues.queue_new, name="queue-new"),
    path(Q + "panel/", queues.queue_panel, name="queue-panel"),
    path(Q + "rename/", queues.queue_rename, name="queue-rename"),
    path(Q + "delete/", queues.queue_delete, name="queue-delete"),
    path(Q + "tags/", queues.queue_tags, name="queue-tags"),
    path(Q + "clear/", queues.queue_clear, name="queue-clear"),
    path(Q + "pause/", queues.queue_pause, name="queue-pause"),
    path(Q + "move/", queues.entries_move, name="entries-move"),
    path(Q + "dequeue/", queues.entries_dequeue, name="entries-dequeue"),
    # AUTOSCALERS
    path("orchestration/autoscalers/", autoscalers.autoscalers_page, name="autoscalers"),
    path("orchestration/autoscalers/new/", autoscalers.autoscaler_form, name="autoscaler-new"),
    path("orchestration/autoscalers/new/json/", autoscalers.autoscaler_edit, name="autoscaler-new-json"),
    path(A, autoscalers.autoscaler_page, name="autoscaler"),
    path(A + "live/", autoscalers.autoscaler_live, name="autoscaler-live"),
    path(A + "edit/", autoscalers.autoscaler_form, name="autoscaler-edit"),
    path(A + "edit/json/", autoscalers.autoscaler_edit, name="autoscaler-edit-json"),
    path(A + "state/", autoscalers.autoscaler_state, name="autoscaler-state"),
    path(A + "delete/", autoscalers.autoscaler_delete, name="autoscaler-delete"),
    path(A + "export/", autoscalers.autoscaler_export, name="autoscaler-export"),
    path(A + "spend/", autoscalers.autoscaler_spend_graph, name="autoscaler-spend"),
    path(
        A + "machines/<str:instance_id>/console/",
        autoscalers.autoscaler_machine_console,
        name="autoscaler-machine-console",
    ),
    path("agent/wheels/", autoscalers.agent_wheels_index, name="agent-wheels"),
    path("agent/wheels/<str:name>", autoscalers.agent_wheel_file, name="agent-wheel"),
    # EXPERIMENTS
    path("experiments/", experiments.experiments_page, name="experiments"),
    path("experiments/rows/", experiments.experiment_rows, name="experiment-rows"),
    path("experiments/new/", experiments.experiment_new, name="experiment-new"),
    path("experiments/bulk/", experiments.experiments_bulk, name="experiments-bulk"),
    path(X, experiments.experiment_page, name="experiment"),
    path(X + "status/", experiments.experiment_status, name="experiment-status"),
    path(X + "log/", experiments.experiment_log, name="experiment-log"),
    path(X + "graph/", experiments.graph_experiment, name="graph-experiment"),
    path(X + "<str:verb>/", experiments.experiment_action, name="experiment-action"),
]

"""ClearML's REST API over Muster's services, so unmodified clearml-agents serve Muster's queues."""

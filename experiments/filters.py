"""The filters of the experiment list, one FilterSet for the page and the API alike."""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from django.db.models import Q, QuerySet

from experiments.models import Experiment, Status
from queues.selectors import queue_find


def _statuses(value: str) -> list[str]:
    statuses = [s for s in value.split(",") if s]
    bad = [s for s in statuses if s not in Status.values]
    if bad:
        raise forms.ValidationError(f"unknown status {bad[0]!r}")
    return statuses


class StatusesField(forms.CharField):
    """Comma-separated statuses, each one Muster knows."""

    def clean(self, value: Any) -> list[str]:
        text = super().clean(value)
        return _statuses(text) if text else []


class StatusesFilter(django_filters.Filter):
    field_class = StatusesField

    def filter(self, qs: QuerySet[Any], value: list[str]) -> QuerySet[Any]:
        return qs.filter(status__in=value) if value else qs


class ExperimentFilter(django_filters.FilterSet):
    status = StatusesFilter(max_length=200, help_text="comma-separated statuses")
    queue = django_filters.CharFilter(max_length=100, method="by_queue", help_text="queue id or name")
    owner = django_filters.CharFilter(max_length=150, field_name="owner__username")
    project = django_filters.CharFilter(max_length=200)
    search = django_filters.CharFilter(max_length=200, method="by_search", help_text="name contains, or id starts with")

    class Meta:
        model = Experiment
        fields = ("status", "queue", "owner", "project", "search")

    def by_queue(self, qs: QuerySet[Experiment], _name: str, value: str) -> QuerySet[Experiment]:
        """By queues' one "id or name" rule (queues/selectors.py); a queue that does not exist has none."""
        queue = queue_find(value)
        return qs.filter(queue=queue) if queue is not None else qs.none()

    def by_search(self, qs: QuerySet[Experiment], _name: str, value: str) -> QuerySet[Experiment]:
        return qs.filter(Q(name__icontains=value) | Q(id__startswith=value.lower()))

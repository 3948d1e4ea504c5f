"""The filters of the audit trail's list (a FilterSet, as every list's)."""

from __future__ import annotations

import django_filters

from core.models import AuditEvent


class AuditFilter(django_filters.FilterSet):
    object_type = django_filters.CharFilter(max_length=40)
    object_id = django_filters.CharFilter(max_length=200)

    class Meta:
        model = AuditEvent
        fields = ("object_type", "object_id")

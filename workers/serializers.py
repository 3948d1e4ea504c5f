"""The report's body, declared once: these serializers document it in the OpenAPI schema, and
workers/report_view.py compiles its fast checker from the same fields (their bounds, nulls,
lengths and patterns), so the two cannot drift apart."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class GpuStatSerializer(serializers.Serializer[Any]):
    index = serializers.IntegerField(min_value=0, max_value=1024)
    util = serializers.FloatField(min_value=0, max_value=100, required=False, allow_null=True)
    memory_used_mb = serializers.FloatField(min_value=0, max_value=1e9, required=False, allow_null=True)
    memory_free_mb = serializers.FloatField(min_value=0, max_value=1e9, required=False, allow_null=True)
    temperature_c = serializers.FloatField(min_value=-100, max_value=300, required=False, allow_null=True)
    ecc_errors = serializers.IntegerField(min_value=0, max_value=2**62, required=False, allow_null=True)


def _rate() -> serializers.FloatField:
    return serializers.FloatField(min_value=0, max_value=1e15, required=False, allow_null=True)


class MachineStatsSerializer(serializers.Serializer[Any]):
    cpu_percent = serializers.FloatField(min_value=0, max_value=100, required=False, allow_null=True)
    cpu_per_core = serializers.ListField(
        child=serializers.FloatField(min_value=0, max_value=100), max_length=1024, required=False
    )
    memory_used_mb = _rate()
    memory_free_mb = _rate()
    gpus = serializers.ListField(child=GpuStatSerializer(), max_length=64, required=False)
    network_rx_bps = _rate()
    network_tx_bps = _rate()
    disk_read_bps = _rate()
    disk_write_bps = _rate()
    disk_free_mb = _rate()


class RunningSerializer(serializers.Serializer[Any]):
    attempt = serializers.RegexField(r"^[0-9a-f]{32}$")
    token = serializers.CharField(max_length=64)
    iteration = serializers.IntegerField(min_value=0, max_value=2**62, required=False, allow_null=True)


class AttemptStatSerializer(serializers.Serializer[Any]):
    attempt = serializers.RegexField(r"^[0-9a-f]{32}$")
    cpu_percent = serializers.FloatField(min_value=0, max_value=100_000, required=False, allow_null=True)
    memory_mb = _rate()
    gpu_util = serializers.FloatField(min_value=0, max_value=100_000, required=False, allow_null=True)
    gpu_memory_mb = _rate()


class ReportSerializer(serializers.Serializer[Any]):
    instance_id = serializers.CharField(max_length=64, required=False, allow_blank=True)
    interval_s = serializers.FloatField(min_value=0, max_value=3600, required=False)
    running = serializers.ListField(child=RunningSerializer(), max_length=256, required=False)
    machine = MachineStatsSerializer(required=False)
    attempts = serializers.ListField(child=AttemptStatSerializer(), max_length=256, required=False)

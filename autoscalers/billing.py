"""What machines cost: each cloud's billing rule over an instance's lifetime, spend in a window,
burn rate and a month-end forecast. Prices are per hour (the resource's, by default from the
price table, data/instance_prices.csv). Estimates: disks, addresses and egress are not counted.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path

MINIMUM_S = {"aws": 60, "gcp": 60, "local": 0}  # EC2 Linux: per second, 60 s minimum; GCE: 1 minute minimum
PRICES = Path(__file__).parent / "data" / "instance_prices.csv"


@cache
def _price_table() -> dict[tuple[str, str], tuple[Decimal, Decimal | None]]:
    table: dict[tuple[str, str], tuple[Decimal, Decimal | None]] = {}
    with PRICES.open() as f:
        for row in csv.DictReader(f):
            spot = Decimal(row["spot_usd_per_hour"]) if row["spot_usd_per_hour"] else None
            table.setdefault((row["provider"], row["instance_type"]), (Decimal(row["on_demand_usd_per_hour"]), spot))
    return table


def list_price(provider: str, instance_type: str, spot: bool = False) -> Decimal | None:
    """The table's hourly price (spot or on-demand), or None for a type it does not list."""
    found = _price_table().get((provider, instance_type))
    if found is None:
        return None
    on_demand, spot_price = found
    return spot_price if spot and spot_price is not None else on_demand


def billable_seconds(provider: str, start: datetime, end: datetime) -> float:
    return max((end - start).total_seconds(), float(MINIMUM_S.get(provider, 0)), 0.0)


def cost(provider: str, hourly: Decimal, start: datetime | None, end: datetime) -> Decimal:
    if start is None:
        return Decimal("0")
    return (hourly * Decimal(str(billable_seconds(provider, start, end))) / Decimal(3600)).quantize(Decimal("0.0001"))


@dataclass(frozen=True)
class Life:
    """One instance's billed life: from its launch to its end (None: still running)."""

    hourly: Decimal
    start: datetime | None
    end: datetime | None


def spend_between(provider: str, lives: Iterable[Life], since: datetime, now: datetime) -> Decimal:
    """Spend inside [since, now): each life's part of the window; a life that began inside it
    carries its minimum charge there."""
    total = Decimal("0")
    for life in lives:
        if life.start is None or life.start >= now:
            continue  # not started in the window
        end = min(life.end or now, now)
        if end <= since:
            continue
        if life.start >= since:
            total += cost(provider, life.hourly, life.start, end)
        else:
            total += (life.hourly * Decimal(str((end - since).total_seconds())) / Decimal(3600)).quantize(
                Decimal("0.0001")
            )
    return total


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def month_end(now: datetime) -> datetime:
    start = month_start(now)
    return (start + timedelta(days=32)).replace(day=1)


def burn_rate(lives: Iterable[Life]) -> Decimal:
    """USD per hour of the machines running now."""
    return sum((life.hourly for life in lives if life.start is not None and life.end is None), Decimal("0"))


def forecast_month(spent: Decimal, burn: Decimal, now: datetime) -> Decimal:
    """The month's spend if what runs now keeps running to the month's end."""
    hours_left = Decimal(str((month_end(now) - now).total_seconds() / 3600))
    return (spent + burn * hours_left).quantize(Decimal("0.01"))

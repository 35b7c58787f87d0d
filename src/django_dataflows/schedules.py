"""Schedules: cron validation, every slot computation (cron and interval), our DST rule.

Pure functions, no database: the models, the heartbeat's claim, backfills, the admin and the
API all call these, so a schedule means the same thing everywhere. A flow's slots are on
its cron expression in its zone, or on the grid ``first slot + k * run_interval``;
:class:`Catchup` says what the flow does with the slots it missed.

Cron fields are matched by `cronsim <https://github.com/cuu508/cronsim>`_ (never parsed
here). We chose it over croniter because it is small, typed, has no dependencies, follows
Debian cron's day-of-month/day-of-week rule and its validation names the bad field ("Bad
minute"); croniter 7.0 also fires an ambiguous local time twice, which our rule forbids.

The DST rule is ours and is applied here, around the library:

* when the hour field names fixed hours (it does not start with ``*``), slots are computed
  on the wall clock of the flow's zone: a local time that does not exist that day runs at
  the first instant after the gap, and an ambiguous one runs once, at its first occurrence;
* wildcard or stepped hours (``*``, ``*/2``) fire at every real instant that matches.
"""

from __future__ import annotations

import math
import zoneinfo
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from functools import lru_cache
from typing import Protocol

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import TextChoices
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

#: The macros we accept, and the five-field expression each stands for.
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MAX_CRON_LENGTH = 100
_ONE_MINUTE = timedelta(minutes=1)


class InvalidSchedule(ValueError):
    """A stored cron expression or time zone that cannot be evaluated."""


def expand(expression: str) -> str:
    """The five-field form of ``expression`` (macros replaced), whitespace normalised."""
    stripped = expression.strip()
    return MACROS.get(stripped.lower(), " ".join(stripped.split()))


def cron_error(expression: str) -> str | None:
    """Why ``expression`` is not an acceptable cron expression, or ``None`` when it is."""
    stripped = expression.strip()
    if not stripped:
        return _("Enter a cron expression.")
    if len(stripped) > MAX_CRON_LENGTH:
        return _("A cron expression has at most %(max)d characters.") % {"max": MAX_CRON_LENGTH}
    if stripped.startswith("@"):
        if stripped.lower() == "@reboot":
            return _("@reboot is not supported: flows run from the heartbeat, which has no reboot.")
        if stripped.lower() not in MACROS:
            return _("Unknown macro %(macro)s; use one of %(macros)s.") % {
                "macro": stripped,
                "macros": ", ".join(sorted(MACROS)),
            }
    fields = expand(stripped).split()
    if len(fields) != 5:
        return _(
            "A cron expression has five fields (minute hour day-of-month month day-of-week); "
            "%(expression)r has %(count)d."
        ) % {"expression": stripped, "count": len(fields)}
    try:
        CronSim(" ".join(fields), datetime(2000, 1, 1))
    except CronSimError as exc:
        return _("%(expression)r is not a valid cron expression: %(error)s.") % {
            "expression": stripped,
            "error": str(exc).lower(),
        }
    return None


@lru_cache(maxsize=1024)
def _valid_fields(expression: str) -> tuple[str, ...] | None:
    """The five fields of a valid expression, or ``None`` (cached: checked on every slot)."""
    return None if cron_error(expression) else tuple(expand(expression).split())


def validate_cron(value: str) -> None:
    """Field validator for ``DataFlow.cron`` (a blank value is left to the model's clean)."""
    if not value:
        return
    error = cron_error(value)
    if error:
        raise ValidationError(error, code="invalid_cron")


@lru_cache(maxsize=1)
def _zone_names() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone_error(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone name we know, or ``None`` when it is."""
    if name == "UTC" or name in _zone_names():
        return None
    return _("%(name)r is not a known time zone; use an IANA name such as Europe/Berlin.") % {
        "name": name
    }


def validate_timezone(value: str) -> None:
    """Field validator for ``DataFlow.timezone`` (blank means ``settings.TIME_ZONE``)."""
    if not value:
        return
    error = timezone_error(value)
    if error:
        raise ValidationError(error, code="invalid_timezone")


def zone_name(name: str) -> str:
    """The zone a flow's schedule uses: its own, or ``settings.TIME_ZONE`` (read now)."""
    return name or settings.TIME_ZONE or "UTC"


def get_zone(name: str) -> tzinfo:
    """The ``tzinfo`` for a flow's ``timezone`` field; ``InvalidSchedule`` if unknown.

    Validation (``timezone_error``) lists the whole time zone database once per process
    (~70 ms); the heartbeat only loads the one zone it needs, as ``ZoneInfo`` caches it.
    """
    resolved = zone_name(name)
    if resolved == "UTC":
        return UTC
    try:
        return zoneinfo.ZoneInfo(resolved)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise InvalidSchedule(timezone_error(resolved) or str(exc)) from exc


def _has_fixed_hours(fields: tuple[str, ...]) -> bool:
    return not fields[1].startswith("*")


def _is_imaginary(local: datetime) -> bool:
    return local != local.astimezone(UTC).astimezone(local.tzinfo)


def _on_wall_clock(naive: datetime, zone: tzinfo) -> datetime:
    """A wall-clock time in ``zone`` as a real instant, by our DST rule.

    ``fold=0`` picks an ambiguous time's first occurrence; a time inside a spring-forward
    gap moves on, a minute at a time, to the first real minute after it.
    """
    local = naive.replace(tzinfo=zone, fold=0)
    while _is_imaginary(local):
        naive += _ONE_MINUTE
        local = naive.replace(tzinfo=zone, fold=0)
    return local


def iter_cron(expression: str, zone_label: str, after: datetime) -> Iterator[datetime]:
    """Slots of a cron schedule strictly after ``after`` (aware), in UTC, in order.

    Raises ``InvalidSchedule`` when the expression or the zone cannot be evaluated (for
    example a value stored without validation).
    """
    fields = _valid_fields(expression)
    if fields is None:
        raise InvalidSchedule(cron_error(expression))
    zone = get_zone(zone_label)
    after_utc = after.astimezone(UTC)
    try:
        if _has_fixed_hours(fields):
            # Walk the wall clock (naive local time, no DST), then place each match.
            start = after_utc.astimezone(zone).replace(tzinfo=None)
            # A slot in a gap moves up to a few hours later, past later wall-clock matches:
            # start early enough that such a slot is still seen.
            naive_slots = CronSim(" ".join(fields), start - timedelta(hours=3))
            for naive in naive_slots:
                slot = _on_wall_clock(naive, zone).astimezone(UTC)
                if slot > after_utc:
                    yield slot
        else:
            for slot in CronSim(" ".join(fields), after_utc.astimezone(zone)):
                slot = slot.astimezone(UTC)
                if slot > after_utc:
                    yield slot
    except CronSimError as exc:  # pragma: no cover - cron_error() ran the same parser
        raise InvalidSchedule(str(exc)) from exc


def next_cron_slot(expression: str, zone_label: str, after: datetime) -> datetime:
    """The first slot of the cron schedule strictly after ``after``.

    Memoised: one heartbeat computes the next slot of many flows from the same instant,
    and flows tend to share a few expressions ("0 * * * *"), so most calls are lookups.
    """
    return _next_cron_slot(expression, zone_name(zone_label), after)


@lru_cache(maxsize=4096)
def _next_cron_slot(expression: str, zone_label: str, after: datetime) -> datetime:
    for slot in iter_cron(expression, zone_label, after):
        return slot
    raise InvalidSchedule(_("%(expression)r never fires.") % {"expression": expression})


def previous_cron_slot(expression: str, zone_label: str, before: datetime) -> datetime | None:
    """The last slot of the cron schedule strictly before ``before`` (``None`` if none in
    five years): the start of the data interval that ends at ``before``."""
    for days in (2, 40, 400, 5 * 366):
        found = None
        for slot in iter_cron(expression, zone_label, before - timedelta(days=days)):
            if slot >= before:
                break
            found = slot
        if found is not None:
            return found
    return None


def upcoming_cron_slots(
    expression: str, zone_label: str, after: datetime, count: int
) -> list[datetime]:
    """The next ``count`` slots strictly after ``after``, in UTC (fewer if it ends)."""
    slots: list[datetime] = []
    if count <= 0:
        return slots
    for slot in iter_cron(expression, zone_label, after):
        if slots and slot <= slots[-1]:
            continue  # two wall-clock times in one gap land on the same instant: run once
        slots.append(slot)
        if len(slots) == count:
            break
    return slots


def describe_cron(expression: str, zone_label: str = "") -> str:
    """The schedule in words: ``"At 02:30 on Monday through Friday (Europe/Berlin)"``."""
    if cron_error(expression):
        return _("invalid cron expression %(expression)r") % {"expression": expression}
    text = CronSim(expand(expression), datetime(2000, 1, 1)).explain()
    return f"{text} ({zone_name(zone_label)})"


class Catchup(TextChoices):
    """What a scheduled flow does with the slots it missed (downtime, disabled)."""

    LATEST = "latest", gettext_lazy("Run once for the missed slots")
    SKIP = "skip", gettext_lazy("Skip slots found late")
    ALL = "all", gettext_lazy("Run every missed slot")


class Scheduled(Protocol):
    """What slot arithmetic reads of a flow (a ``DataFlow`` has it all)."""

    @property
    def name(self) -> str: ...

    @property
    def cron(self) -> str: ...

    @property
    def timezone(self) -> str: ...

    @property
    def run_interval(self) -> int | None: ...

    @property
    def catchup(self) -> str: ...


def next_slot_after(slot: datetime, interval: int, now: datetime) -> datetime:
    """The first slot on ``slot``'s grid (``slot + k * interval``) that is later than ``now``.

    Advancing from the slot, not from ``now``, keeps a schedule from drifting; jumping past
    every missed slot at once means a flow that was down for a day runs once, not once per
    missed slot.
    """
    if slot > now:
        return slot
    missed = math.floor((now - slot).total_seconds() / interval) + 1
    return slot + timedelta(seconds=missed * interval)


def next_slot_for(data_flow: Scheduled, slot: datetime, now: datetime) -> datetime:
    """The flow's next slot after claiming ``slot`` at ``now``.

    Missed slots collapse (the next slot is the first one after ``now``) unless the flow's
    ``catchup`` is ``"all"``: then it is the slot right after ``slot``, past or not, so
    every missed slot runs in turn. Raises ``InvalidSchedule`` for a cron expression or
    zone stored without validation, and for a flow without a schedule.
    """
    if data_flow.catchup == Catchup.ALL:
        now = min(slot, now)
    if data_flow.cron:
        return next_cron_slot(data_flow.cron, data_flow.timezone, max(slot, now))
    if data_flow.run_interval is None:
        raise InvalidSchedule(f"Data flow {data_flow.name!r} has neither cron nor run_interval.")
    return next_slot_after(slot, data_flow.run_interval, now)


def previous_slot_for(data_flow: Scheduled, slot: datetime) -> datetime | None:
    """The slot of the flow's schedule just before ``slot`` (``None`` without a schedule).

    With ``slot`` this bounds a run's data interval ``[previous_slot, slot)``.
    """
    if data_flow.cron:
        return previous_cron_slot(data_flow.cron, data_flow.timezone, slot)
    if data_flow.run_interval is None:
        return None
    return slot - timedelta(seconds=data_flow.run_interval)

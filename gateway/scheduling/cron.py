"""5-field POSIX cron expressions in an IANA time zone, as the API's ``schedule`` means them.

``cronsim`` does the calendar arithmetic (ranges, steps, names, the day-of-month/day-of-week
OR rule, and daylight-saving gaps and repeats); this module narrows it to what the API accepts:
five fields, no seconds or year, none of the extensions ``L``, ``W``, ``#`` and ``?``, no
``@daily`` shortcuts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError

_VALUE = r"(?:\*|[0-9]{1,2}|[A-Z]{3})"
_ITEM = re.compile(rf"^{_VALUE}(?:-{_VALUE})?(?:/[0-9]{{1,2}})?$")
FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
LOOKBACK = timedelta(hours=25)
"""How far back a missed fire is still found (a day, plus a daylight-saving hour)."""
HOST_ALIASES = frozenset({"localtime", "posixrules", "Factory"})
"""Names some databases hold that are not places: a schedule must not depend on the host."""
UPCOMING = 5
"""How many future fire times a schedule shows (``upcoming_runs_at``)."""


class InvalidSchedule(ValueError):
    """The expression or time zone is not one the API accepts; the message says which part."""


@dataclass(frozen=True)
class Cron:
    expression: str
    zone: ZoneInfo

    @classmethod
    def parse(cls, expression: str, timezone: str) -> Cron:
        fields = expression.split()
        if len(fields) != len(FIELDS):
            raise InvalidSchedule(
                f"expression: {expression!r} must have 5 fields (minute hour day-of-month month "
                "day-of-week); seconds, years and shortcuts such as @daily are not supported"
            )
        for name, field in zip(FIELDS, fields, strict=True):
            for item in field.upper().split(","):
                if not _ITEM.match(item):
                    raise InvalidSchedule(
                        f"expression: the {name} field {field!r} is not plain cron (L, W, # and ? "
                        "are not supported)"
                    )
        if timezone not in _zone_names():
            raise InvalidSchedule(f"timezone: {timezone!r} is not an IANA time zone")
        try:
            zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidSchedule(f"timezone: {timezone!r} is not an IANA time zone") from None
        cron = cls(expression, zone)
        try:
            next(cron.after(datetime.now(UTC)))
        except CronSimError as exc:
            raise InvalidSchedule(f"expression: {expression!r}: {exc}") from None
        except StopIteration:
            raise InvalidSchedule(f"expression: {expression!r} never matches a date") from None
        return cron

    def after(self, moment: datetime) -> Iterator[datetime]:
        """Fire times strictly after ``moment``, in UTC, ascending."""
        for fire in CronSim(self.expression, moment.astimezone(self.zone)):
            yield fire.astimezone(UTC)

    def upcoming(self, moment: datetime, count: int = UPCOMING) -> list[datetime]:
        return list(islice(self.after(moment), count))

    def due(self, since: datetime, now: datetime) -> datetime | None:
        """The last fire time after ``since`` and at or before ``now``, if any.

        Found walking forward (as ``upcoming`` does), so the times a daylight-saving change
        repeats or skips come out the same both ways; the walk starts at most ``LOOKBACK``
        before ``now``, so a long-idle cursor costs a bounded number of steps.
        """
        latest = None
        for fire in self.after(max(since, now - LOOKBACK)):
            if fire > now:
                break
            latest = fire
        return latest


@functools.cache
def _zone_names() -> frozenset[str]:
    """The IANA names this host's time zone database holds (``tzdata`` when the OS has none);
    not directories, ``localtime`` or ``posix/...`` paths, which ``ZoneInfo`` also opens."""
    return frozenset(available_timezones()) - HOST_ALIASES

"""Validation of values no JSON-schema pattern can check: cron expressions and time zones.

The CRD carries a coarse ``pattern`` for both (five fields or an ``@`` macro; an
IANA-looking name); these functions are the precise checks the models run.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

#: Coarse shape checked by the API server: five whitespace-separated fields or a macro.
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+(\s+\S+){4})$"
#: Coarse shape of an IANA time zone name (``UTC``, ``Europe/Madrid``, ``Etc/GMT+5``).
TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$"

#: Files of the system zoneinfo directory that are not IANA zone names.
_NOT_IANA = frozenset({"localtime", "posixrules", "Factory"})
_CRON_RE = re.compile(CRON_PATTERN)
_TIME_ZONE_RE = re.compile(TIME_ZONE_PATTERN)


@lru_cache(maxsize=256)
def check_cron(expression: str) -> str:
    """Return ``expression`` if croniter accepts it and it ever fires; raise ValueError."""
    if not _CRON_RE.match(expression):
        raise ValueError(
            f"invalid cron expression {expression!r}: expected five fields "
            "(minute hour day-of-month month day-of-week) or a macro such as @daily"
        )
    if not croniter.is_valid(expression):
        raise ValueError(f"invalid cron expression {expression!r}")
    try:
        croniter(expression, datetime(2000, 1, 1)).get_next(datetime)
    except Exception as exc:  # croniter raises several types for impossible dates
        raise ValueError(f"cron expression {expression!r} never fires") from exc
    return expression


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo of an IANA time zone name; ValueError if unknown."""
    if not _TIME_ZONE_RE.match(name) or name in _NOT_IANA:
        raise ValueError(f"invalid time zone {name!r}: expected an IANA name such as Europe/Madrid")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {name!r}: expected an IANA name") from exc


def check_time_zone(name: str) -> str:
    """Return ``name`` if it is a known IANA time zone; raise ValueError."""
    zone(name)
    return name

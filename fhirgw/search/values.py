"""Value normalization shared by indexing and query parsing.

* strings: case- and accent-insensitive form (NFKD, combining marks dropped, casefolded,
  whitespace folded), compared byte-wise on both databases
* dates: a FHIR date/dateTime/instant is a *range* in integer microseconds since the epoch
  (UTC), inclusive at both ends: ``2026-01`` is ``[2026-01-01T00:00:00.000000Z,
  2026-01-31T23:59:59.999999Z]``; the precision given is the range's width
* numbers: the implicit precision range of a decimal's text (``100`` is ``[99.5, 100.5]``)
"""
from __future__ import annotations

import functools
import re
import unicodedata
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

#: open ends of a period / range
DATE_MIN = -(2 ** 62)
DATE_MAX = 2 ** 62
NUM_MIN = -1e300
NUM_MAX = 1e300

#: index column widths (tables.py); longer values are cut (string prefix search still works)
TOKEN_LEN = 255
STRING_LEN = 255
URI_LEN = 512

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


# ---------------------------------------------------------------- strings

@functools.lru_cache(maxsize=65536)
def normalize_string(value: str) -> str:
    """Case- and accent-insensitive form: ``"Ödön  ÉVA"`` -> ``"odon eva"``."""
    if value.isascii():
        return " ".join(value.lower().split())
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def prefix_upper_bound(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``.

    ``norm >= p AND norm < prefix_upper_bound(p)`` is a prefix match that both databases
    answer from a B-tree index (byte/code point order: SQLite BINARY, PostgreSQL "C").
    """
    return prefix + "\U0010ffff"


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def cut(value: str | None, length: int) -> str | None:
    if value is None:
        return None
    return value if len(value) <= length else value[:length]


# ---------------------------------------------------------------- dates

_RE_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2})(?::(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?)?"
    r"(?P<tz>Z|[+-]\d{2}:?\d{2})?)?)?)?$")


class DateFormatError(ValueError):
    pass


def _to_us(dt: datetime) -> int:
    return (dt - _EPOCH) // _US


#: a full instant with a timezone (every ``meta.lastUpdated``, ``AuditEvent.recorded``):
#: parsed by ``datetime.fromisoformat`` in C, 50 times faster than the general path
_RE_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.(\d{1,6}))?(?:Z|[+-]\d{2}:\d{2})\Z")


def date_range(value: str) -> tuple[int, int]:
    """``[low, high]`` in epoch microseconds for a FHIR date, dateTime or instant (or a search
    value like ``2026-01-05T10:00``). Without a timezone, times are taken as UTC.

    >>> date_range("2026-01-05T10:00:00.5Z") == (date_range("2026-01-05")[0] + 36_000_500_000,
    ...                                           date_range("2026-01-05")[0] + 36_000_599_999)
    True
    """
    fast = _RE_INSTANT.match(value)
    if fast is not None:
        try:
            low = _to_us(datetime.fromisoformat(
                value[:-1] + "+00:00" if value[-1] == "Z" else value))
        except ValueError:   # e.g. month 13: the general path says what is wrong
            pass
        else:
            frac = fast.group(1)
            return low, low + (10 ** (6 - len(frac)) if frac else 1_000_000) - 1
    m = _RE_DATE.match(value.strip())
    if not m:
        raise DateFormatError(f"not a FHIR date/dateTime: {value!r}")
    g = m.groupdict()
    try:
        y = int(g["y"])
        tz = timezone.utc
        if g["tz"] and g["tz"] != "Z":
            sign = -1 if g["tz"][0] == "-" else 1
            digits = g["tz"][1:].replace(":", "")
            tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:])))
        if g["m"] is None:
            low = datetime(y, 1, 1, tzinfo=tz)
            high = _add_months(low, 12)
        elif g["d"] is None:
            low = datetime(y, int(g["m"]), 1, tzinfo=tz)
            high = _add_months(low, 1)
        elif g["H"] is None:
            low = datetime(y, int(g["m"]), int(g["d"]), tzinfo=tz)
            high = low + timedelta(days=1)
        else:
            H, M = int(g["H"]), int(g["M"] or 0)
            if g["M"] is None:
                raise DateFormatError(f"a time needs hours and minutes: {value!r}")
            if g["S"] is None:
                low = datetime(y, int(g["m"]), int(g["d"]), H, M, tzinfo=tz)
                high = low + timedelta(minutes=1)
            else:
                frac = g["f"] or ""
                us = int((frac + "000000")[:6]) if frac else 0
                low = datetime(y, int(g["m"]), int(g["d"]), H, M, int(g["S"]), us, tzinfo=tz)
                width = 10 ** (6 - min(len(frac), 6)) if frac else 1_000_000
                high = low + timedelta(microseconds=width)
    except (ValueError, OverflowError) as exc:
        raise DateFormatError(f"not a valid date: {value!r} ({exc})") from None
    return _to_us(low), _to_us(high) - 1


def _add_months(dt: datetime, months: int) -> datetime:
    total = dt.month - 1 + months
    y, m = dt.year + total // 12, total % 12 + 1
    if y > 9999:
        return datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.tzinfo) + _US
    return dt.replace(year=y, month=m)


def now_us() -> int:
    return _to_us(datetime.now(timezone.utc))


def us_to_iso(us: int) -> str:
    return (_EPOCH + timedelta(microseconds=us)).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- numbers

def number_range(text: str) -> tuple[float, float, float]:
    """``(value, low, high)`` of a decimal's text with its implicit precision.

    ``100`` -> (100, 99.5, 100.5); ``100.00`` -> (100, 99.995, 100.005); in exponent form the
    spec reads the mantissa's digits: ``1e2`` -> (100, 95, 105).
    """
    try:
        d = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not d.is_finite():
        raise ValueError(f"not a number: {text!r}")
    exp = d.as_tuple().exponent
    if "e" in text.lower():
        exp -= 1
    half = Decimal(5).scaleb(exp - 1)
    return float(d), float(d - half), float(d + half)


def decimal_text(value) -> str:
    """The text of a JSON number (RawDecimal keeps the text it was parsed from)."""
    raw = getattr(value, "raw", None)
    if raw is not None:
        return raw
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    return repr(value) if isinstance(value, float) else str(value)

"""``CarePlan/[id]/$schedule``: a treatment plan's timed activities become Appointments.

Parameters ``start`` and ``end`` (valueDate, inclusive). Every activity with
``detail.scheduledTiming`` (weekly individual therapy, group three times a week, ...)
yields one Appointment per occurrence in the range: participants are the plan's subject and
the activity's performers, ``serviceType`` the activity's code, the length the timing's
``duration`` (default 60 min). Each occurrence carries an identifier derived from the plan,
the activity and its start, so running ``$schedule`` twice creates nothing new. The answer is
a ``collection`` Bundle of the range's Appointments (created or already there).
"""
from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

from ..model.errors import BadRequest, Unprocessable
from .params import Params

_UNIT_DAYS = {"d": 1, "wk": 7, "mo": 30, "a": 365}
_UNIT_MIN = {"min": 1, "h": 60, "s": 1 / 60, "d": 1440}
_WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
MAX_OCCURRENCES = 1000


def occurrences(timing: dict, start: date, end: date) -> list[datetime]:
    """Start times (UTC) of a Timing's occurrences between ``start`` and ``end``.

    >>> t = {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
    ...                 "dayOfWeek": ["tue"], "timeOfDay": ["10:00:00"]}}
    >>> [d.isoformat() for d in occurrences(t, date(2026, 3, 1), date(2026, 3, 15))]
    ['2026-03-03T10:00:00+00:00', '2026-03-10T10:00:00+00:00']
    >>> t = {"repeat": {"frequency": 3, "period": 1, "periodUnit": "wk"}}
    >>> [d.date().isoformat() for d in occurrences(t, date(2026, 3, 2), date(2026, 3, 8))]
    ['2026-03-02', '2026-03-04', '2026-03-06']
    """
    rep = timing.get("repeat") or {}
    times = [time.fromisoformat(t) for t in rep.get("timeOfDay") or ["09:00:00"]]
    bounds = rep.get("boundsPeriod") or {}
    if bounds.get("start"):
        start = max(start, date.fromisoformat(bounds["start"][:10]))
    if bounds.get("end"):
        end = min(end, date.fromisoformat(bounds["end"][:10]))
    days: list[date] = []
    if rep.get("dayOfWeek"):
        wanted = {_WEEKDAYS.index(d) for d in rep["dayOfWeek"] if d in _WEEKDAYS}
        d = start
        while d <= end:
            if d.weekday() in wanted:
                days.append(d)
            d += timedelta(days=1)
    else:
        unit = rep.get("periodUnit", "wk")
        if unit not in _UNIT_DAYS:
            raise Unprocessable(f"Timing periodUnit {unit!r} is too fine for sessions "
                                "(use d, wk, mo)", expression="CarePlan.activity.detail."
                                "scheduledTiming.repeat.periodUnit")
        period_days = float(rep.get("period", 1)) * _UNIT_DAYS[unit]
        freq = int(rep.get("frequency", 1))
        window = start
        while window <= end:
            for i in range(freq):
                d = window + timedelta(days=int(i * period_days / freq))
                if d <= end:
                    days.append(d)
            window += timedelta(days=max(1, round(period_days)))
    out = [datetime.combine(d, t, tzinfo=timezone.utc) for d in days for t in times]
    if len(out) > MAX_OCCURRENCES:
        raise Unprocessable(f"The range holds {len(out)} sessions; at most {MAX_OCCURRENCES} "
                            "per call: ask for a shorter range", expression="Parameters")
    return sorted(out)


def _minutes(timing: dict) -> int:
    rep = timing.get("repeat") or {}
    if rep.get("duration"):
        return max(1, int(float(rep["duration"]) * _UNIT_MIN.get(rep.get("durationUnit", "min"), 1)))
    return 60


def schedule(tx, careplan_id: str, params, *, base: str, settings) -> dict:
    p = Params(params, "schedule", {"start": "Date", "end": "Date"})
    start, end = p.date("start"), p.date("end")
    if start is None or end is None:
        raise BadRequest("$schedule needs both start and end (valueDate)",
                         expression="Parameters.parameter")
    if end < start:
        raise BadRequest("end is before start", expression=p.where("end"))
    plan = tx.read("CarePlan", careplan_id).resource()
    if plan.get("status") not in ("active", "draft", "on-hold"):
        raise Unprocessable(f"CarePlan/{careplan_id} is {plan.get('status')}; only an active "
                            "(or draft) plan is scheduled", expression="CarePlan.status")
    system = settings.identifier_system.rstrip("/") + "/careplan-occurrence"
    entries = []
    for n, activity in enumerate(plan.get("activity") or []):
        detail = activity.get("detail") or {}
        timing = detail.get("scheduledTiming")
        if not timing or detail.get("status") in ("cancelled", "completed", "stopped",
                                                  "entered-in-error"):
            continue
        minutes = _minutes(timing)
        participants = []
        if plan.get("subject"):
            participants.append({"actor": plan["subject"], "required": "required",
                                 "status": "accepted"})
        for perf in detail.get("performer") or []:
            participants.append({"actor": perf, "required": "required", "status": "accepted"})
        for when in occurrences(timing, start, end):
            value = f"CarePlan/{careplan_id}/activity/{n}/{when.strftime('%Y-%m-%dT%H:%M')}"
            found = tx.search("Appointment", [("identifier", f"{system}|{value}")], limit=1)
            if found:
                stored = found[0]
            else:
                appt = {
                    "resourceType": "Appointment", "status": "booked",
                    "identifier": [{"system": system, "value": value}],
                    "description": detail.get("description") or (detail.get("code") or {}).get("text"),
                    "start": when.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                    "end": (when + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S+00:00"),
                    "minutesDuration": minutes,
                    "supportingInformation": [{"reference": f"CarePlan/{careplan_id}"}],
                    "participant": participants,
                }
                if detail.get("code"):
                    appt["serviceType"] = [detail["code"]]
                appt = {k: v for k, v in appt.items() if v is not None}
                stored = tx.create("Appointment", appt).stored
            entries.append({"fullUrl": f"{base}/Appointment/{stored.res_id}",
                            "resource": stored.resource()})
    entries.sort(key=lambda e: e["resource"]["start"])
    return {"resourceType": "Bundle", "type": "collection", "total": len(entries),
            "entry": entries}

"""Synthetic human-written dates and their ISO form, for tiny-seq2seq.

Years 1000-2099; optional weekday (full or abbreviated, the true weekday of the date); day with or
without an ordinal suffix, or "the Nth of Month"; month names full or abbreviated (optionally with a
full stop) in lower, upper, title or random letter case; day-month-year and month-day-year orders;
optional commas.
"""

from __future__ import annotations

import datetime as dt
import random

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
MONTH_ABBR = [["Jan"], ["Feb"], ["Mar"], ["Apr"], ["May"], ["Jun"], ["Jul"], ["Aug"], ["Sep", "Sept"], ["Oct"],
              ["Nov"], ["Dec"]]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WEEKDAY_ABBR = [["Mon"], ["Tue", "Tues"], ["Wed"], ["Thu", "Thur", "Thurs"], ["Fri"], ["Sat"], ["Sun"]]
FIRST, LAST = dt.date(1000, 1, 1).toordinal(), dt.date(2099, 12, 31).toordinal()


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _case(word: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.5:
        return word
    if r < 0.7:
        return word.lower()
    if r < 0.9:
        return word.upper()
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in word)


def render(date: dt.date, rng: random.Random) -> str:
    """One human-written form of `date`."""
    if rng.random() < 0.5:
        month = MONTHS[date.month - 1]
    else:
        month = rng.choice(MONTH_ABBR[date.month - 1]) + ("." if rng.random() < 0.2 else "")
    month = _case(month, rng)
    r = rng.random()
    day = ordinal(date.day) if r < 0.4 else (f"{date.day:02d}" if r < 0.5 else str(date.day))
    comma = "," if rng.random() < 0.5 else ""
    order = rng.random()
    if order < 0.15:
        text = f"the {ordinal(date.day)} of {month}{comma} {date.year}"
        if rng.random() < 0.3:
            text = _case("the", rng) + text[3:]
    elif order < 0.55:
        text = f"{day} {month}{comma} {date.year}"
    else:
        text = f"{month} {day}{comma} {date.year}"
    w = rng.random()
    if w < 0.35:
        name = WEEKDAYS[date.weekday()] if w < 0.18 else rng.choice(WEEKDAY_ABBR[date.weekday()])
        text = f"{_case(name, rng)}{',' if rng.random() < 0.6 else ''} {text}"
    return text


def sample(rng: random.Random) -> tuple[str, str]:
    date = dt.date.fromordinal(rng.randint(FIRST, LAST))
    return render(date, rng), date.isoformat()


def dataset(n: int, seed: int, exclude: set[str] | None = None) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        src, tgt = sample(rng)
        if exclude is None or src.lower() not in exclude:
            out.append((src, tgt))
    return out

"""Slot-value parsing for the booking backend: names, times, dates, ticket counts, screening types, ratings.

TicketTalk argument values are free text typed by crowd workers ("7 p.m", "tonight", "me and my friend",
"rated PG-13"). These functions map them to canonical values, returning None (or raising ValueError for
time preferences) when a value cannot be understood, so the backend can answer with a structured error.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import date, timedelta

NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
MONTHS = {m: i + 1 for i, m in enumerate(
    "january february march april may june july august september october november december".split())}
MONTHS.update({m[:3]: i for m, i in list(MONTHS.items())})
MONTHS["sept"] = 9
WEEKDAYS = {d: i for i, d in enumerate("monday tuesday wednesday thursday friday saturday sunday".split())}
WEEKDAYS.update({d[:3]: i for d, i in list(WEEKDAYS.items())})

SCREENINGS = ("standard", "IMAX", "3D", "Dolby", "XD", "4DX", "RPX")
_SCREEN_WORDS = {s.casefold(): s for s in SCREENINGS} | {"regular": "standard", "normal": "standard",
                                                           "2d": "standard", "digital": "standard"}
RATINGS = ("G", "PG", "PG-13", "R", "NC-17")


def fold(text: str) -> str:
    """Casefold, strip accents, unify curly quotes; keeps punctuation and spacing."""
    text = unicodedata.normalize("NFKD", text.replace("\u2019", "'").replace("\u2018", "'"))
    return "".join(c for c in text if not unicodedata.combining(c)).casefold()


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", fold(text).replace("&", " and ").replace("'", ""))


def norm_key(text: str) -> str:
    """Matching key: lowercase alphanumerics only, a leading article dropped ("The Back-Country" → backcountry)."""
    ws = words(text)
    if len(ws) > 1 and ws[0] in ("the", "a", "an"):
        ws = ws[1:]
    return "".join(ws)


# ------------------------------------------------------------------------------------------------- times

_TIME = re.compile(r"(\d{1,2})(?:[:.](\d{2}))?\s*(a\.?\s?m\.?|p\.?\s?m\.?)?")


def parse_time(text: str) -> int | None:
    """'7:10pm', '7 p.m', '19:30', '7:20', 'seven', 'noon' → minutes after midnight. Bare hours 1-11 are pm
    (cinema showtimes), 12 is noon."""
    s = fold(text).strip().rstrip(".").strip()
    s = re.sub(r"\s*o'?clock", "", s)
    if s in ("noon", "midday"):
        return 12 * 60
    if s == "midnight":
        return 0
    w = s.split()
    if w and w[0] in NUMBER_WORDS and 1 <= NUMBER_WORDS[w[0]] <= 12:
        s = " ".join([str(NUMBER_WORDS[w[0]])] + w[1:])
    m = _TIME.fullmatch(s)
    if not m:
        return None
    h, mi, suffix = int(m.group(1)), int(m.group(2) or 0), (m.group(3) or "").replace(".", "").replace(" ", "")
    if mi > 59 or h > 23 or (suffix and not 1 <= h <= 12):
        return None
    if suffix == "am":
        h = 0 if h == 12 else h
    elif suffix == "pm" or 1 <= h <= 11:
        h = h if h == 12 else h + 12
    return h * 60 + mi


def format_time(minutes: int) -> str:
    h, m = divmod(minutes, 60)
    return f"{(h - 1) % 12 + 1}:{m:02d}{'am' if h < 12 else 'pm'}"


_RANGE = re.compile(r"(?:between|from)?\s*(.+?)\s*(?:-|to|and|until|till)\s*(.+)")
_DAYPARTS = {"morning": (0, 719), "matinee": (720, 1019), "afternoon": (720, 1019), "evening": (1020, 1439),
             "tonight": (1020, 1439), "night": (1020, 1439), "late": (1200, 1439), "later": (1200, 1439),
             "early": (0, 1019)}
_ANY = {"", "any", "anytime", "any time", "whenever", "all", "no preference", "doesn't matter", "flexible"}


def parse_time_preference(text: str) -> tuple[int, int] | None:
    """A preferred time or range → inclusive (lo, hi) minutes window; None means no constraint.
    'after 5pm', 'before 8', 'between 6 and 8pm', 'around 2pm', '7:00 PM' (±60 min), 'evening'…
    Raises ValueError when the text is not understood."""
    s = fold(text).strip().rstrip(".!?")
    s = re.sub(r"^(maybe|perhaps|ideally|preferably|something|sometime)\s+", "", s)
    s = re.sub(r"^(around|about|close to|closer to|near)\s+the\s+", r"\1 ", s)
    if s in _ANY:
        return None
    if re.search(r"\b(latest|last)\b", s):
        return _DAYPARTS["late"]
    if re.search(r"\b(earliest|first|earlier)\b", s):
        return _DAYPARTS["early"]
    m = re.fullmatch(r"(?:around|about|near|close to|closer to)?\s*(.+?)\s+or\s+(.+)", s)
    if m and parse_time(m.group(1)) is not None and parse_time(m.group(2)) is not None:  # 'around 6 or 7'
        a, b = sorted((parse_time(m.group(1)), parse_time(m.group(2))))
        return (max(0, a - 60), min(1439, b + 60))
    for prefix, kind in (("after ", "after"), ("later than ", "after"), ("before ", "before"), ("by ", "before"),
                         ("earlier than ", "before")):
        if s.startswith(prefix):
            t = parse_time(s[len(prefix):])
            if t is None:
                break
            return (t, 1439) if kind == "after" else (0, t)
    if s.endswith(" or later"):
        t = parse_time(s[: -len(" or later")])
        if t is not None:
            return (t, 1439)
    m = _RANGE.fullmatch(re.sub(r"^(around|about)\s+", "", s))
    if m:
        a, b = m.group(1), m.group(2)
        tb = parse_time(b)
        ta = parse_time(a + re.sub(r"[\d:.\s]", "", b)) if tb is not None else None  # '6 to 8pm' → 6pm
        ta = ta if ta is not None else parse_time(a)
        if ta is not None and tb is not None and ta <= tb:
            return (ta, tb)
    t = parse_time(re.sub(r"^(around|about|approximately|approx|roughly|near|at|close to|closer to)\s+", "", s))
    if t is not None:
        return (max(0, t - 60), min(1439, t + 60))
    for word, window in _DAYPARTS.items():
        if re.search(rf"\b{word}\b", s):
            return window
    raise ValueError(f"time preference {text!r} not understood (try 'after 6pm', 'around 7pm', 'evening', 'any')")


# ------------------------------------------------------------------------------------------------- dates


def parse_date(text: str, today: date) -> date | None:
    """'today', 'tonight', 'tomorrow', 'Friday', 'this Saturday', 'April 12th', '4/12', '2020-04-12' → a date.
    Weekdays mean the next such day, today included."""
    s = re.sub(r"^(this|on|for|next|coming)\s+", "", fold(text).strip().rstrip(".!?"))
    s = re.sub(r"\s+(night|evening|afternoon|morning)$", "", s)
    first = re.split(r"[\s,]+", s, maxsplit=1)[0]
    if first in ("today", "tonight", "tomorrow") and s != first:  # 'tomorrow, (February 19)', 'today 4/24'
        s = first
    if s in ("today", "tonight", "now", "evening", "afternoon", "morning", "night", "later today"):
        return today
    if s == "weekend":
        return today + timedelta(days=(5 - today.weekday()) % 7)
    if s in ("tomorrow", "tmrw", "tomorow"):
        return today + timedelta(days=1)
    if s in WEEKDAYS:
        return today + timedelta(days=(WEEKDAYS[s] - today.weekday()) % 7)
    m = re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", s)
    if m:
        y, mo, d = (int(g) for g in m.groups())
        return _date(y, mo, d)
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?", s)
    if m:
        y = int(m.group(3)) if m.group(3) else today.year
        return _date(y + 2000 if y < 100 else y, int(m.group(1)), int(m.group(2)))
    s = re.sub(r"^(monday|tuesday|wednesday|thursday|friday|saturday|sunday),?\s+", "", s).replace(",", " ")
    m = (re.fullmatch(r"([a-z]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?(?:\s+(\d{4}))?", s)
         or re.fullmatch(r"(?:the\s+)?(\d{1,2})(?:st|nd|rd|th)?\s+(?:of\s+)?([a-z]+)(?:\s+(\d{4}))?", s))
    if m:
        a, b, y = m.groups()
        month, day = (a, b) if not a.isdigit() else (b, a)
        if month in MONTHS:
            return _date(int(y) if y else today.year, MONTHS[month], int(day))
    return None


def _date(y: int, m: int, d: int) -> date | None:
    try:
        return date(y, m, d)
    except ValueError:
        return None


def format_date(d: date) -> str:
    return f"{d:%B} {d.day}, {d.year}"


# --------------------------------------------------------------------------------------- other slot values

_NUMBER = re.compile(r"\d+(?:[.,/]\d+)?|\b(?:" + "|".join(NUMBER_WORDS) + r")\b")
_AMBIGUOUS = re.compile(r"\b(?:or|to|maybe|about|around|approximately|roughly|some|few|several|dozens?)\b|[-–~?]")


def parse_tickets(text: str) -> int | None:
    """Strictly one count: '3', 'two', 'four adults', 'a couple', 'me and my friend', 'John, Sue and I', 'just me'.
    None when the text holds no count; ValueError (a one-line reason the agent sees) when it is not exactly one
    whole number: several numbers ('5 or 6', '2 adults and 1 child'), a fraction or decimal ('1.5'), a range or a
    hedge ('3-4', 'maybe 3')."""
    s = fold(text).strip()
    ws = words(s)
    nums = _NUMBER.findall(s)
    if nums:
        if any(not n.isalpha() and not n.isdigit() for n in nums):
            raise ValueError(f"{text!r} is not a whole number of tickets")
        if len(nums) > 1 or _AMBIGUOUS.search(s):
            raise ValueError(f"{text!r} is not one number of tickets; ask how many tickets in total")
        n = nums[0]
        return int(n) if n.isdigit() else NUMBER_WORDS[n]
    if {"couple", "pair", "both", "us"} & set(ws) and "and" not in ws:
        return 2
    parts = [p for p in re.split(r",|\band\b|&|\bplus\b", s) if p.strip()]
    if len(parts) > 1:
        return len(parts)
    if set(ws) <= {"just", "me", "myself", "only", "single", "i", "ticket", "for", "a"} and ws:
        return 1
    return None


def parse_screenings(text: str) -> set[str] | None:
    """'IMAX', '3d', 'IMAX or 3D', 'Dolby Cinema', 'regular' → canonical screening types; None if none known."""
    found = {_SCREEN_WORDS[w] for w in words(text) if w in _SCREEN_WORDS}
    return found or None


def parse_rating(text: str) -> str | None:
    m = re.search(r"(?<![a-z0-9-])(nc-?17|pg-?13|pg|g|r)(?![a-z0-9-])", fold(text).replace(" - ", "-"))
    if not m:
        return None
    r = m.group(1).upper()
    return {"PG13": "PG-13", "NC17": "NC-17"}.get(r, r)


def parse_percent(text: str) -> int | None:
    m = re.search(r"(\d{1,3})\s*%", text) or re.search(r"\b(\d{2})\b", text)
    return int(m.group(1)) if m and 0 <= int(m.group(1)) <= 100 else None


def singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word

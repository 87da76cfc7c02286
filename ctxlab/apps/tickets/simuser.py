"""The simulated TicketTalk user: a goal sampled from the catalogue, and a rule-based user that pursues it.

`sample_goal` picks one real showing (movie, theater, day, time, screening), so every goal is achievable, and draws
a ticket count, an optional time preference / screening type, how each slot is phrased ("near me", "on Sunday",
"two"), how the user opens ("I'd like to see X", "What's playing near me?", "What's on at <theater>?") and possibly
one question about the movie (duration, rating, cast, ...). `SimUser` answers the agent's *text* by keywords
(showtimes listed, "how many", "which theater", "shall I book", ...), so it can talk to the rule agent of
simulate.py and to a trained model alike (`ctxlab chat tickets MODEL --simulate-user`). Each turn also reports the
slots it mentions, as the API argument values they stand for, for the rule agent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from random import Random

from ctxlab.apps.tickets import values as V
from ctxlab.apps.tickets.backend import BookingBackend
from ctxlab.apps.tickets.catalogue import Catalogue, build_catalogue, default_catalogue
from ctxlab.errors import CtxlabError

ATTRIBUTES = ("duration.movie", "rating.movie", "name.person", "description.plot", "name.genre", "review.critic")
TIME_RE = re.compile(r"\b(\d{1,2}:\d\d)\s*([ap]\.?m\.?)?", re.I)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


# ------------------------------------------------------------------------------------------------- the goal


@dataclass(frozen=True)
class Goal:
    """What the simulated user wants and how it will say it. `*_arg` is the API argument value the mention
    stands for ("near me" → "nearby"); `upfront` lists the slots volunteered in the opening."""

    movie: str
    theater: str
    location: str  # canonical "City, State"
    day: str  # ISO date
    time: str  # the showtime as the backend lists it, e.g. "7:10pm"
    screening: str
    tickets: int
    movie_say: str
    theater_say: str
    location_say: str
    location_arg: str
    date_say: str  # "tomorrow", "on Sunday"
    date_arg: str  # "tomorrow", "Sunday"
    pref_say: str | None  # "in the evening", "after 6pm"
    pref_arg: str | None  # "evening", "after 6pm"
    screening_say: str | None  # "IMAX"
    tickets_say: str  # "two", "3"
    opening: str  # "movie" | "location" | "theater"
    greet: bool  # the user first says only hello
    agent_first: bool  # the agent greets first (`<S>`)
    attribute: str | None  # asked about once the movie is known
    upfront: frozenset[str] = frozenset()


class CatalogueIndex:
    """Catalogue lookups for goal sampling: showings with clean names, unique city names."""

    def __init__(self, cat: Catalogue):
        self.cat = cat
        self.today = date.fromisoformat(cat.today)
        self.movies = {m.id: m for m in cat.movies}
        self.theaters = {t.id: t for t in cat.theaters}
        self.locations = {x.id: x for x in cat.locations}
        cities: dict[str, int] = {}
        for x in cat.locations:
            cities[V.norm_key(x.city)] = cities.get(V.norm_key(x.city), 0) + 1
        self.unique_city = {x.id for x in cat.locations if x.state and cities[V.norm_key(x.city)] == 1}
        clean = re.compile(r"^[A-Z0-9][\w&'.:\- ]*$")
        ok_theaters = {t.id for t in cat.theaters if clean.match(t.name) and not re.search(r"[a-z][A-Z]", t.name)}
        self.showtimes = [s for s in cat.showtimes if s.theater_id in ok_theaters
                          and clean.match(self.movies[s.movie_id].title) and s.minutes >= 10 * 60]
        if not self.showtimes:
            raise CtxlabError("the catalogue has no showings to simulate dialogues about")


def pick(rng: Random, *options: str) -> str:
    return options[rng.randrange(len(options))]


def _time_pref(rng: Random, minutes: int) -> tuple[str, str] | None:
    """A time preference (how it is said, the argument) whose window contains `minutes`; None: no preference."""
    h = minutes // 60
    cands = [(f"around {V.format_time(round(minutes / 60) * 60).replace(':00', '')}",) * 2,
             (f"after {V.format_time(h * 60).replace(':00', '')}",) * 2]
    if h + 1 <= 23:
        cands.append((f"before {V.format_time((h + 1) * 60).replace(':00', '')}",) * 2)
    if minutes >= 17 * 60:
        cands.append(("in the evening", "evening"))
    elif 12 * 60 <= minutes < 17 * 60:
        cands.append(("in the afternoon", "afternoon"))
    say, arg = cands[rng.randrange(len(cands))]
    window = V.parse_time_preference(arg)
    return (say, arg) if window is None or window[0] <= minutes <= window[1] else None


def _date_say(rng: Random, day: date, today: date, minutes: int) -> tuple[str, str]:
    offset = (day - today).days
    if offset == 0:
        word = "tonight" if minutes >= 17 * 60 and rng.random() < 0.4 else "today"
        return word, word
    if offset == 1 and rng.random() < 0.8:
        return "tomorrow", "tomorrow"
    if rng.random() < 0.7:
        wd = f"{day:%A}"
        return f"on {wd}", wd
    md = f"{day:%B} {day.day}"
    return f"on {md}", md


def _tickets_say(rng: Random, n: int) -> str:
    return NUMBER_WORDS[n] if rng.random() < 0.6 else str(n)


def sample_goal(rng: Random, ix: CatalogueIndex) -> Goal:
    s = ix.showtimes[rng.randrange(len(ix.showtimes))]
    movie, theater = ix.movies[s.movie_id].title, ix.theaters[s.theater_id]
    loc = ix.locations[theater.location_id]
    day = date.fromisoformat(s.day)
    if loc.id == ix.cat.home_location_id and rng.random() < 0.5:
        location_say = pick(rng, "near me", "nearby", "close to me")
        location_arg = "nearby"
    elif loc.id in ix.unique_city and rng.random() < 0.5:
        location_say = location_arg = loc.city
    else:
        location_say = location_arg = loc.name
    date_say, date_arg = _date_say(rng, day, ix.today, s.minutes)
    pref = _time_pref(rng, s.minutes) if rng.random() < 0.4 else None
    if pref is None and s.minutes >= 13 * 60 and rng.random() < 0.06:  # a wish the showing does not meet
        pref = ("in the morning", "morning")
    tickets = rng.choice((1, 2, 2, 2, 3, 4, 4, 5, 6))
    opening = rng.choices(("movie", "location", "theater"), weights=(6, 3, 2))[0]
    upfront = {k for k, p in (("date", 0.5), ("location", 0.35), ("pref", 0.7), ("screening", 0.6),
                              ("tickets", 0.3), ("theater", 0.2)) if rng.random() < p}
    if opening == "location":
        upfront = (upfront | {"location"}) - {"theater", "tickets"}
    elif opening == "theater":
        upfront = (upfront | {"theater"}) - {"location", "tickets"}
    if pref is None:
        upfront.discard("pref")
    screening_say = s.screening if s.screening != "standard" and rng.random() < 0.5 else None
    if screening_say is None:
        upfront.discard("screening")
    if "theater" in upfront:
        upfront.discard("location")
    return Goal(movie=movie, theater=theater.name, location=loc.name, day=s.day, time=V.format_time(s.minutes),
                screening=s.screening, tickets=tickets,
                movie_say=movie.lower() if rng.random() < 0.15 else movie,
                theater_say=theater.name.lower() if rng.random() < 0.15 else theater.name,
                location_say=location_say, location_arg=location_arg, date_say=date_say, date_arg=date_arg,
                pref_say=pref[0] if pref else None, pref_arg=pref[1] if pref else None, screening_say=screening_say,
                tickets_say=_tickets_say(rng, tickets), opening=opening, greet=rng.random() < 0.1,
                agent_first=rng.random() < 0.1, attribute=rng.choice(ATTRIBUTES) if rng.random() < 0.3 else None,
                upfront=frozenset(upfront))


# ---------------------------------------------------------------------------------------------- the user


@dataclass(frozen=True)
class UserTurn:
    """What the user says, plus the slots it mentions (argument values) for the rule agent."""

    text: str
    slots: dict[str, str] = field(default_factory=dict)


_BOOKED = re.compile(r"\bbooked\b|\ball set\b|\bconfirmation\b|\bpurchased\b", re.I)
_FAILED = re.compile(r"enough seats|sold out|\bunavailable\b|could ?n[o']t book|booking failed", re.I)
_CLOSING = re.compile(r"\benjoy\b|\bgoodbye\b|\bhave a (great|nice|good)\b|\bbye\b", re.I)
_CONFIRM = re.compile(r"shall i book|should i book|(would|do) you (like|want) me to book|book (them|it|those)\?|"
                      r"go ahead and book|is that (correct|right)\?|want me to (purchase|book)", re.I)
_NO_SHOWS = re.compile(r"\bno (showings|showtimes|shows)\b|isn'?t playing|not playing|\bnothing\b", re.I)


def _norm_time(text: str) -> str:
    m = TIME_RE.search(text)
    if not m:
        return ""
    t = V.parse_time(m.group(0).replace(" ", ""))
    return V.format_time(t) if t is not None else ""


class SimUser:
    """A goal-driven user that answers the agent's text (rule-based, keyword driven)."""

    def __init__(self, goal: Goal, rng: Random):
        self.g, self.rng = goal, rng
        self.told: set[str] = set()
        self.asked_attribute = False
        self.closing = False
        self.done = False

    # -- slot phrases: (text, slots) --------------------------------------------------------------------

    def _tickets(self) -> tuple[str, dict[str, str]]:
        self.told.add("tickets")
        t = self.g.tickets_say
        word = "ticket" if self.g.tickets == 1 else "tickets"
        return pick(self.rng, f"{t} {word}, please.", f"I need {t} {word}.", f"{t.capitalize()}."), \
            {"num.tickets": t}

    def _location(self) -> tuple[str, dict[str, str]]:
        self.told.add("location")
        g = self.g
        if g.location_arg == "nearby":
            text = pick(self.rng, f"Somewhere {g.location_say}.", f"Something {g.location_say}, please.",
                         f"{g.location_say.capitalize()}.")
        else:
            text = pick(self.rng, f"I'm in {g.location_say}.", f"{g.location_say}.", f"In {g.location_say}, please.")
        return text, {"location": g.location_arg}

    def _theater(self) -> tuple[str, dict[str, str]]:
        self.told.add("theater")
        t = self.g.theater_say
        return pick(self.rng, f"{t}, please.", f"Let's go with {t}.", f"{t} works for me.", f"{t}."), \
            {"name.theater": t}

    def _movie(self) -> tuple[str, dict[str, str]]:
        self.told.add("movie")
        m = self.g.movie_say
        return pick(self.rng, f"{m}, please.", f"I'd like to see {m}.", f"{m}."), {"name.movie": m}

    def _date(self) -> tuple[str, dict[str, str]]:
        self.told.add("date")
        g, slots = self.g, {"date.showing": self.g.date_arg}
        d = g.date_say
        if g.pref_say and "pref" not in self.told and self.rng.random() < 0.5:  # "Tomorrow, after 6pm."
            self.told.add("pref")
            slots["time.preference"] = g.pref_arg
            return f"{d.capitalize()}, {g.pref_say}.", slots
        return pick(self.rng, f"{d.capitalize()}.", f"I'd like to go {d}.", f"{d.capitalize()}, please."), slots

    def _attribute(self) -> UserTurn:
        self.asked_attribute = True
        m, a = self.g.movie_say, self.g.attribute
        q = {"duration.movie": f"How long is {m}?", "rating.movie": f"What is {m} rated?",
             "name.person": f"Who is in {m}?", "description.plot": f"What is {m} about?",
             "name.genre": f"What kind of movie is {m}?", "review.critic": f"What do critics say about {m}?"}[a]
        return UserTurn(pick(self.rng, q, f"Before that, {q[0].lower()}{q[1:]}"), {"attribute": a})

    # -- turns -------------------------------------------------------------------------------------------

    def opening(self) -> UserTurn:
        if self.g.greet and "greeted" not in self.told:
            self.told.add("greeted")
            return UserTurn(pick(self.rng, "Hi there.", "Hello!", "Hey, can you help me?"), {"greet": "yes"})
        g, up, slots = self.g, self.g.upfront, {}
        parts = []
        if g.opening == "movie":
            self.told.add("movie")
            slots["name.movie"] = g.movie_say
            if "tickets" in up:
                self.told.add("tickets")
                slots["num.tickets"] = g.tickets_say
                word = "ticket" if g.tickets == 1 else "tickets"
                parts.append(pick(self.rng, f"I need {g.tickets_say} {word} for {g.movie_say}",
                                   f"Can I get {g.tickets_say} {word} to {g.movie_say}"))
            else:
                parts.append(pick(self.rng, f"I'd like to see {g.movie_say}", f"I want to watch {g.movie_say}",
                                   f"I'm looking for tickets to {g.movie_say}", f"Is {g.movie_say} playing"))
        elif g.opening == "location":
            slots["browse"] = "yes"
            parts.append(pick(self.rng, "What movies are playing", "What's showing", "What can I see"))
        else:
            slots["browse"] = "yes"
            parts.append(pick(self.rng, "What's playing", "What movies are showing"))
        if "screening" in up and g.opening == "movie":
            self.told.add("screening")
            slots["type.screening"] = g.screening_say
            parts.append(f"in {g.screening_say}")
        if "theater" in up:
            self.told.add("theater")
            slots["name.theater"] = g.theater_say
            parts.append(f"at {g.theater_say}")
        elif "location" in up:
            self.told.add("location")
            slots["location"] = g.location_arg
            parts.append(g.location_say if g.location_arg == "nearby" else f"in {g.location_say}")
        if "date" in up:
            self.told.add("date")
            slots["date.showing"] = g.date_arg
            parts.append(g.date_say)
        if "pref" in up:
            self.told.add("pref")
            slots["time.preference"] = g.pref_arg
            parts.append(g.pref_say)
        text = " ".join(parts)
        question = text.startswith(("Is ", "Can ", "What"))
        return UserTurn(text + ("?" if question else "."), slots)

    def respond(self, agent_text: str) -> UserTurn | None:
        """The user's next turn after the agent said `agent_text`; None when the user leaves."""
        if self.done:
            return None
        if self.closing:
            self.done = True
            return None
        a = agent_text
        if _BOOKED.search(a) and not _CONFIRM.search(a):
            self.closing = True
            return UserTurn(pick(self.rng, "Thanks!", "Great, thank you.", "Thank you so much."), {"thanks": "yes"})
        if _FAILED.search(a):
            self.closing = True
            return UserTurn("Okay, never mind then. Thanks anyway.", {"bye": "yes"})
        if _CLOSING.search(a) and "?" not in a:
            self.done = True
            return None
        if _CONFIRM.search(a):
            return UserTurn(pick(self.rng, "Yes, please.", "Yes, go ahead.", "Sounds good, book them."),
                            {"confirm": "yes"})
        low = a.lower()
        if ("movie" in self.told and self.g.attribute and not self.asked_attribute and "?" in a
                and "how can i help" not in low):
            return self._attribute()
        times = [_norm_time(m.group(0)) for m in TIME_RE.finditer(a)]
        times = [t for t in times if t]
        if times:
            if self.g.time in times:
                return self._pick_time(self.g.time)
            if "pref" in self.told:  # the wished-for window missed the goal showing: drop the wish
                return self._any_time()
            goal = V.parse_time(self.g.time) or 0
            return self._pick_time(min(times, key=lambda t: abs((V.parse_time(t) or 0) - goal)))
        if _NO_SHOWS.search(a):
            return self._any_time() if "pref" in self.told else self._restate()
        if "how many" in low:
            return UserTurn(*self._tickets())
        if re.search(r"\b(which|what) (theater|theatre|cinema)|theater would you like", low):
            return UserTurn(*self._theater())
        if re.search(r"\b(which|what) (showtime|time)|showtime would you like|what time", low):
            return self._pick_time(self.g.time)
        if re.search(r"\bcity\b|\bwhere\b|\blocat|\barea\b|zip", low):
            return UserTurn(*self._location())
        if re.search(r"\b(which|what) (movie|film)|like to see\?|like to watch\?", low):
            return UserTurn(*self._movie())
        if re.search(r"\b(what|which) (day|date)|\bwhen\b", low):
            return UserTurn(*self._date())
        if re.search(r"how (can|may) i help|what can i do|help you", low):
            return self.opening()
        return self._restate()

    def _pick_time(self, t: str) -> UserTurn:
        self.told.add("time")
        say = t if self.rng.random() < 0.7 else t[:-2]  # "7:10pm" or "7:10"
        return UserTurn(pick(self.rng, f"{say}, please.", f"The {say} showing.", f"I'll take {say}.",
                              f"{say} works."), {"time.showing": t})

    def _any_time(self) -> UserTurn:
        self.told.discard("pref")
        return UserTurn(pick(self.rng, "Any time is fine.", "Whatever time works then.", "Any other time works."),
                        {"any_time": "yes"})

    def _restate(self) -> UserTurn:
        """Say the next goal slot the agent has not heard yet (or the movie again)."""
        for slot, fn in (("movie", self._movie), ("location", self._location), ("date", self._date),
                         ("theater", self._theater), ("tickets", self._tickets)):
            if slot not in self.told:
                return UserTurn(*fn())
        return UserTurn(*self._movie())


def backend_catalogue(backend: BookingBackend) -> Catalogue:
    """The catalogue behind a backend: the built-in or the default one, whichever has its fingerprint."""
    for make in (build_catalogue, default_catalogue):
        cat = make()
        if cat.fingerprint() == backend.fingerprint:
            return cat
    raise CtxlabError(f"{backend.db_path} holds a custom catalogue: pass it as catalogue= too")


def sim_user(seed: int, backend: BookingBackend | None = None, catalogue: Catalogue | None = None) -> SimUser:
    """A simulated user (for `ctxlab chat tickets --simulate-user`) whose goal is a real showing of the backend's
    catalogue; deterministic in `seed`."""
    cat = catalogue or (backend_catalogue(backend) if backend is not None else default_catalogue())
    rng = Random(f"tickets-user:{seed}")
    return SimUser(sample_goal(rng, CatalogueIndex(cat)), rng)

"""Rule-based TicketTalk dialogues over the booking backend: a simulated user with a goal talks to a rule-based
agent that calls the ontology APIs, so every API call in the output really ran and every response is real.

    sims = simulate(2000, seed=0)                     # deterministic in (n, seed, catalogue)
    write_tsv("sim.tsv", sim_examples(sims))          # the TM-3 split TSV format (same tags as train-bc.tsv)

A `Goal` is sampled from the catalogue by picking one real showing (movie, theater, day, time, screening), so it is
always achievable; the user also gets a ticket count, optional time preference / screening type, how it phrases
each slot, how it opens ("I'd like to see X", "What's playing near me?", "What's on at <theater>?") and possibly one
question about the movie (duration, rating, cast, ...). The agent asks for what it is missing (movie, location,
theater, date, tickets), calls find_movies / find_theaters / find_showtimes / get_movie_attribute / check_tickets /
book_tickets, reports results, confirms and books. Argument values copy the user's words (as in TicketTalk:
"nearby", "tomorrow", "two"), except `time.showing`, which is the listed showtime the user picked.

`SimUser` (simuser.py) reacts to the agent's *text* through keywords (times listed, "how many", "which theater",
"shall I book", ...), so the same simulated user can drive a trained model in `ctxlab chat tickets --simulate-user`. The
rule agent instead reads the slots the user reports with each turn (perfect understanding), which keeps its policy
a deterministic function of what the dialogue says. Dialogues in which any call fails are discarded and redrawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from random import Random

from ctxlab.apps.tickets import values as V
from ctxlab.apps.tickets.backend import EMPTY, BookingBackend, result_to_items
from ctxlab.apps.tickets.catalogue import Catalogue, default_catalogue
from ctxlab.apps.tickets.simuser import (
    CatalogueIndex,
    Goal,
    SimUser,
    UserTurn,
    backend_catalogue,
    pick,
    sample_goal,
    sim_user,
)
from ctxlab.errors import CtxlabError
from ctxlab.tasks.tickettalk.formats import (
    ApiCall,
    ApiResponse,
    Dialogue,
    Example,
    Item,
    Start,
    Turn,
    Utterance,
    dialogue_to_examples,
    write_dialogues,
    write_tsv,
)

__all__ = ["Goal", "RuleAgent", "SimDialogue", "SimUser", "UserTurn", "run_dialogue", "sample_goal", "sim_examples",
           "sim_user", "simulate", "to_dialogue"]

MAX_USER_TURNS = 24
MAX_AGENT_STEPS = 6  # agent items (calls + the reply) after one user turn
GREETINGS = ("Hello, I'm your movie ticketing assistant. How may I help you?",
             "Hi, I'm moviebot. I can help you buy movie tickets.")


# --------------------------------------------------------------------------------------------- the agent


def _join(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _listed(names: Sequence[str], k: int = 6) -> str:
    """At most k names: "A, B and C" / "A, B, ... F and more"."""
    names = list(names)
    return _join(names) if len(names) <= k else ", ".join(names[:k]) + " and more"


def _when(date_arg: str) -> str:
    return date_arg if date_arg.lower() in ("today", "tonight", "tomorrow") else f"on {date_arg}"


@dataclass
class _State:
    movie: str | None = None
    location: str | None = None
    theater: str | None = None
    date: str | None = None
    pref: str | None = None
    screening: str | None = None
    tickets: str | None = None
    time: str | None = None
    browse: bool = False
    greet: bool = False
    confirmed: bool = False
    thanked: bool = False
    bye: bool = False
    attribute: str | None = None
    attr_values: tuple[str, ...] | None = None
    results: dict[str, tuple[tuple, tuple[str, ...]]] = field(default_factory=dict)  # api → (key, values)
    said: set[tuple] = field(default_factory=set)
    booked_said: bool = False


Action = tuple[str, object]  # ("say", text) | ("call", ApiCall)


class RuleAgent:
    """The rule-based agent: a deterministic policy over the slots heard so far and the API results seen;
    `rng` only varies the wording."""

    def __init__(self, rng: Random):
        self.rng = rng
        self.s = _State()

    def hear(self, slots: dict[str, str]) -> None:
        s = self.s
        for key, attr in (("name.movie", "movie"), ("location", "location"), ("name.theater", "theater"),
                          ("date.showing", "date"), ("time.preference", "pref"), ("type.screening", "screening"),
                          ("num.tickets", "tickets"), ("time.showing", "time"), ("attribute", "attribute")):
            if key in slots:
                setattr(s, attr, slots[key])
        if "attribute" in slots:
            s.attr_values = None
        s.browse |= "browse" in slots
        s.greet = "greet" in slots
        s.confirmed |= "confirm" in slots
        s.thanked |= "thanks" in slots
        s.bye |= "bye" in slots
        if "any_time" in slots:
            s.pref = None

    def observe(self, call: ApiCall, result: dict) -> None:
        key = self._key(call.name)
        values = next(iter(result["response"].values())) if result.get("ok") else ()
        if call.name == "get_movie_attribute":
            self.s.attr_values = tuple(v for v in values if v != EMPTY)
        else:
            self.s.results[call.name] = (key, tuple(v for v in values if v != EMPTY))

    def _key(self, api: str) -> tuple:
        s = self.s
        return {"find_movies": (s.theater, s.location), "find_theaters": (s.movie, s.location, s.screening),
                "find_showtimes": (s.movie, s.theater, s.date, s.pref, s.screening),
                "check_tickets": (s.movie, s.theater, s.date, s.time, s.tickets),
                "book_tickets": (s.movie, s.theater, s.date, s.time, s.tickets)}.get(api, ())

    def _have(self, api: str) -> tuple[str, ...] | None:
        got = self.s.results.get(api)
        return got[1] if got is not None and got[0] == self._key(api) else None

    def _call(self, name: str, args: list[tuple[str, str | None]]) -> Action:
        return ("call", ApiCall(name, tuple((k, v) for k, v in args if v)))

    def _once(self, key: tuple, full: str, short: str) -> str:
        if key in self.s.said:
            return short
        self.s.said.add(key)
        return full

    def decide(self) -> Action:
        s = self.s
        if s.attribute and s.attr_values is None and s.movie:
            return self._call("get_movie_attribute", [("name.movie", s.movie), ("attribute", s.attribute)])
        act = self._decide()
        if act[0] == "say" and s.attribute and s.attr_values is not None:
            act = ("say", self._attribute_answer() + " " + str(act[1]))
            s.attribute, s.attr_values = None, None
        return act

    def _attribute_answer(self) -> str:
        s, m = self.s, self.s.movie
        vals = s.attr_values or ()
        if not vals:
            return f"Sorry, I don't have that information for {m}."
        v = _join(vals)
        return {"duration.movie": f"{m} runs {v}.", "rating.movie": f"{m} is rated {v}.",
                "name.person": f"{m} stars {v}.", "description.plot": f"Here is the plot: {v.rstrip('.')}.",
                "name.genre": f"{m} is a {v} movie.", "review.critic": f"Critics give it {v}."}[s.attribute]

    def _decide(self) -> Action:
        s, rng = self.s, self.rng
        booking = (s.movie, s.theater, s.date, s.time, s.tickets)
        try:
            one = V.parse_tickets(s.tickets or "") == 1
        except ValueError:  # an ambiguous count: the backend will refuse it, the wording does not matter
            one = False
        n_word = "ticket" if one else "tickets"
        if s.bye:
            return ("say", pick(rng, "Sorry I couldn't help this time. Goodbye!", "I'm sorry about that. Goodbye!"))
        if s.thanked:
            return ("say", pick(rng, "You're welcome! Enjoy the movie.", "My pleasure. Have a great time!"))
        booked = self._have("book_tickets")
        if booked is not None:
            if s.booked_said:
                return ("say", "Is there anything else I can help you with?")
            s.booked_said = True
            if booked and booked[0] == "success":
                return ("say", pick(
                    rng, f"Your {s.tickets} {n_word} for {s.movie} at {s.theater} {_when(s.date)} at {s.time} "
                         f"{'is' if one else 'are'} booked. Enjoy the movie!",
                    f"You're all set! {s.tickets.capitalize()} {n_word} for {s.movie} at {s.theater} "
                    f"{_when(s.date)} at {s.time}. You will get a confirmation by email."))
            return ("say", "Sorry, the booking failed. There are not enough seats left for that showing.")
        status = self._have("check_tickets")
        if status and status[0] == "available" and s.confirmed:
            return self._call("book_tickets", list(zip(("name.movie", "name.theater", "date.showing",
                                                        "time.showing", "num.tickets"), booking, strict=True)))
        if s.time and s.tickets and status is None:
            return self._call("check_tickets", list(zip(("name.movie", "name.theater", "date.showing",
                                                         "time.showing", "num.tickets"), booking, strict=True)))
        if status is not None and status[:1] != ("available",):
            return ("say", f"Sorry, there are not enough seats left for the {s.time} showing of {s.movie}.")
        if status is not None:
            return ("say", pick(
                rng, f"{s.tickets.capitalize()} {n_word} for {s.movie} at {s.theater} {_when(s.date)} at {s.time} "
                     f"{'is' if one else 'are'} available. Shall I book {'it' if one else 'them'}?",
                f"Great, I can get you {s.tickets} {n_word} for {s.movie} at {s.theater} {_when(s.date)} at "
                f"{s.time}. Would you like me to book {'it' if one else 'them'}?"))
        if s.time:
            return ("say", pick(rng, "How many tickets would you like?", "How many tickets do you need?"))
        if s.movie is None:
            return self._movie_step()
        if s.theater is None:
            return self._theater_step()
        if s.date is None:
            return ("say", pick(rng, "What day would you like to go?", "Which day would you like to see it?"))
        times = self._have("find_showtimes")
        if times is None:
            return self._call("find_showtimes", [("name.movie", s.movie), ("name.theater", s.theater),
                                                 ("date.showing", s.date), ("time.preference", s.pref),
                                                 ("type.screening", s.screening)])
        if not times:
            what = f"{s.screening} showings" if s.screening else "showings"
            return ("say", f"Sorry, there are no {what} of {s.movie} at {s.theater} {_when(s.date)} "
                           f"{s.pref or ''}".rstrip() + ". Would another time work?")
        key = ("times", self._key("find_showtimes"))
        return ("say", self._once(key, pick(
            rng, f"{s.movie} is playing at {s.theater} {_when(s.date)} at {_join(times)}. Which showtime would you "
                 "like?",
            f"I found these showtimes for {s.movie} at {s.theater} {_when(s.date)}: {_join(times)}. Which time "
            "works for you?"), "Which showtime would you like?"))

    def _movie_step(self) -> Action:
        s, rng = self.s, self.rng
        if s.greet and not s.browse:
            return ("say", pick(rng, "Hello! How can I help you today?", "Hi there! How can I help you?"))
        if not s.browse:
            return ("say", pick(rng, "What movie would you like to see?", "Sure. Which movie are you interested in?"))
        if not (s.theater or s.location):
            return ("say", pick(rng, "Sure. What city are you in?", "I can help with that. Where are you located?"))
        movies = self._have("find_movies")
        if movies is None:
            return self._call("find_movies", [("name.theater", s.theater)] if s.theater
                              else [("location", s.location)])
        if not movies:
            return ("say", "Sorry, I couldn't find any movies there. Would you like to try another place?")
        where = f"at {s.theater}" if s.theater else ("near you" if s.location == "nearby" else f"in {s.location}")
        key = ("movies", self._key("find_movies"))
        return ("say", self._once(key, pick(
            rng, f"Here is what's playing {where}: {_listed(movies)}. Which movie would you like to see?",
            f"These movies are showing {where}: {_listed(movies)}. What would you like to see?"),
            "Which movie would you like to see?"))

    def _theater_step(self) -> Action:
        s, rng = self.s, self.rng
        if s.location is None:
            return ("say", pick(rng, "What city are you in?", "Where are you located?",
                                 "Sure. Which city should I look in?"))
        theaters = self._have("find_theaters")
        if theaters is None:
            return self._call("find_theaters", [("location", s.location), ("name.movie", s.movie),
                                                ("type.screening", s.screening)])
        if not theaters:
            return ("say", f"Sorry, {s.movie} is not playing in {s.location}. Would you like a different movie?")
        key = ("theaters", self._key("find_theaters"))
        what = f"{s.movie} in {s.screening}" if s.screening else s.movie
        return ("say", self._once(key, pick(
            rng, f"{what} is playing at {_listed(theaters)}. Which theater would you like?",
            f"I found {what} at {_listed(theaters)}. Which theater would you like?"), "Which theater would you like?"))


# ---------------------------------------------------------------------------------------------- dialogues


@dataclass(frozen=True)
class SimDialogue:
    conversation_id: str
    goal: Goal
    items: tuple[Item, ...]
    booked: bool

    def calls(self) -> list[tuple[ApiCall, tuple[ApiResponse, ...]]]:
        """Each API call with the response items that follow it."""
        out = []
        for i, it in enumerate(self.items):
            if isinstance(it, ApiCall):
                j = i + 1
                while j < len(self.items) and isinstance(self.items[j], ApiResponse):
                    j += 1
                out.append((it, tuple(self.items[i + 1: j])))
        return out


def run_dialogue(backend: BookingBackend, goal: Goal, rng: Random, cid: str) -> SimDialogue | None:
    """One dialogue between SimUser and RuleAgent on `backend`; None if a call fails or it does not finish."""
    user, agent = SimUser(goal, rng), RuleAgent(rng)
    items: list[Item] = []
    if goal.agent_first:
        items += [Start(), Utterance("agent", pick(rng, *GREETINGS))]
    turn: UserTurn | None = user.opening()
    n_calls = 0
    for _ in range(MAX_USER_TURNS):
        if turn is None:
            booked = agent.s.results.get("book_tickets", ((), ()))[1][:1] == ("success",)
            return SimDialogue(cid, goal, tuple(items), booked)
        items.append(Utterance("user", turn.text))
        agent.hear(turn.slots)
        text = None
        for _ in range(MAX_AGENT_STEPS):
            kind, what = agent.decide()
            if kind == "say":
                text = str(what)
                items.append(Utterance("agent", text))
                break
            call = what
            assert isinstance(call, ApiCall)
            n_calls += 1
            result = backend.call(call.name, call.arg_dict(), idempotency_key=f"{cid}:{n_calls}")
            if not result["ok"]:
                return None
            items.append(call)
            items.extend(result_to_items(result))
            agent.observe(call, result)
        if text is None:
            return None
        turn = user.respond(text)
    return None


def simulate(n: int, seed: int = 0, *, backend: BookingBackend | None = None, catalogue: Catalogue | None = None,
             max_tries: int = 4) -> list[SimDialogue]:
    """`n` dialogues, deterministic in (n, seed, catalogue). Bookings change seat counts, so a fresh temporary
    backend is used unless one is given (then the result also depends on its state)."""
    if n < 0:
        raise CtxlabError(f"number of dialogues must be >= 0, got {n}")
    own = backend is None
    cat = catalogue
    if backend is None:
        cat = cat or default_catalogue()
        backend = BookingBackend(catalogue=cat)
    try:
        ix = CatalogueIndex(cat or backend_catalogue(backend))
        out = []
        for i in range(n):
            rng = Random(f"tickets-sim:{seed}:{i}")
            for attempt in range(max_tries):
                cid = f"sim-{seed}-{i:06d}" + (f"-{attempt}" if attempt else "")
                d = run_dialogue(backend, sample_goal(rng, ix), rng, cid)
                if d is not None:
                    out.append(d)
                    break
        return out
    finally:
        if own:
            backend.close()


def to_dialogue(sim: SimDialogue) -> Dialogue:
    """The dialogue JSON form: an assistant turn per agent utterance or call (calls carry their responses)."""
    turns: list[Turn] = []
    items = [it for it in sim.items if not isinstance(it, Start)]
    i = 0
    while i < len(items):
        it = items[i]
        if isinstance(it, Utterance):
            turns.append(Turn(len(turns), "user" if it.speaker == "user" else "assistant", it.text))
            i += 1
        elif isinstance(it, ApiCall):
            j = i + 1
            while j < len(items) and isinstance(items[j], ApiResponse):
                j += 1
            call = ApiCall(it.name, it.args, tuple(items[i + 1: j]), len(turns))
            turns.append(Turn(len(turns), "assistant", "", (call,)))
            i = j
        else:
            raise CtxlabError(f"{sim.conversation_id}: a response without its call")
    return Dialogue(sim.conversation_id, tuple(turns), vertical="ticket_booking", scenario="simulated")


def sim_examples(sims: Sequence[SimDialogue]) -> list[Example]:
    """Next-action rows (the split TSV rows) of simulated dialogues, in dialogue order."""
    return [ex for s in sims for ex in dialogue_to_examples(to_dialogue(s))]


def write_simulated(out: str | Path, n: int = 1000, seed: int = 0, dialogues_json: str | Path | None = None) -> str:
    """`ctxlab tickets simulate`: n simulated dialogues as a split TSV (and optionally TM-3 dialogue JSON)."""
    sims = simulate(n, seed)
    write_tsv(out, sim_examples(sims))
    if dialogues_json:
        write_dialogues(dialogues_json, [to_dialogue(s) for s in sims])
    return f"{len(sims)} dialogues, {sum(s.booked for s in sims)} bookings → {out}"

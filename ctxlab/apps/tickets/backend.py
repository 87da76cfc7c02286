"""The TicketTalk booking service: the nine ontology APIs over a seeded catalogue stored in SQLite (WAL).

    backend = BookingBackend()                      # temporary database, default catalogue
    backend.call("find_theaters", {"location": "Spring Hills, Kansas", "name.movie": "Mulan"})
    → {"ok": True, "api": "find_theaters", "response": {"name.theater": ["AMC Mountain 16", …]}, "meta": {}}

Every call returns a JSON-serialisable dict, never raises for bad input: `ok` False carries
`error = {"code", "message", "argument"?, …}` with codes unknown_api, invalid_request, unknown_argument,
missing_argument, invalid_argument, not_found, ambiguous, idempotency_conflict, backend_busy.
List APIs answer `{key: [values]}`, `{"empty": ["_empty_"]}` when nothing matches (resolve_* and
get_movie_attribute keep their key: `["_empty_"]`, as in the data); check/book answer `{"status": [...]}`
with available/unavailable and success/failure. `book_tickets` decrements seats in one `BEGIN IMMEDIATE`
transaction with a conditional UPDATE (and a CHECK seats_left >= 0), so concurrent bookings never oversell;
a request repeated with the same idempotency key books once and replays the first answer.
`result_to_items` / `format_result` turn a result into the TSV `<PR>…<PRAN>…<PRAV>…` form.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

from ctxlab.apps.tickets import values as V
from ctxlab.apps.tickets.catalogue import STATE_ABBREVS, Catalogue, default_catalogue
from ctxlab.apps.tickets.ontology import ARG_ALIASES, Ontology, load_ontology
from ctxlab.errors import CtxlabError
from ctxlab.tasks.tickettalk.formats import ApiResponse, format_items

EMPTY = "_empty_"
MAX_TICKETS = 20
# A location made only of these words is the user's own ("nearby", "near me", "_AUTOMATIC").
_HOME_WORDS = {"near", "nearby", "me", "my", "here", "local", "current", "location", "closest", "nearest",
               "around", "automatic", "area", "close", "closer", "by", "to", "the", "i", "am", "where", "you",
               "your", "house", "home", "apartment", "place", "theater", "theaters", "movie", "within", "of",
               "miles", "mile", "neighborhood", "town"}
_HOME_MARKERS = {"near", "nearby", "nearest", "closest", "closer", "me", "my", "you", "your", "here", "local",
                 "current", "automatic"}
_LOC_STOP = {"in", "the", "of", "city", "downtown", "area", "near", "around", "north", "south", "east", "west",
             "central", "greater", "to"}
_GENRE_SYNONYMS = {"scary": "horror", "funny": "comedy", "scifi": "science fiction", "sci": "science fiction",
                   "romance": "romantic", "cartoon": "animation", "animated": "animation", "kid": "family",
                   "children": "family", "superhero": "action", "documentarie": "documentary"}
_STOP = {"the", "a", "an", "in", "at", "of", "one", "with", "new", "that", "about", "movie", "film", "please"}
_THEATER_STOP = _STOP | {"theater", "theatre", "theaters", "cinema", "cinemas", "movies"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS locations(id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT NOT NULL,
    state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS movies(id INTEGER PRIMARY KEY, title TEXT NOT NULL, genre TEXT NOT NULL,
    rating TEXT NOT NULL, duration_min INTEGER NOT NULL, release_date TEXT NOT NULL, plot TEXT NOT NULL,
    other TEXT NOT NULL, critic_score INTEGER NOT NULL, audience_score INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS movie_people(movie_id INTEGER NOT NULL REFERENCES movies(id),
    role TEXT NOT NULL CHECK (role IN ('person', 'character')), position INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (movie_id, role, position));
CREATE TABLE IF NOT EXISTS theaters(id INTEGER PRIMARY KEY, name TEXT NOT NULL,
    location_id INTEGER NOT NULL REFERENCES locations(id), screenings TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS showtimes(id INTEGER PRIMARY KEY, movie_id INTEGER NOT NULL REFERENCES movies(id),
    theater_id INTEGER NOT NULL REFERENCES theaters(id), day TEXT NOT NULL, minutes INTEGER NOT NULL,
    screening TEXT NOT NULL, capacity INTEGER NOT NULL, seats_left INTEGER NOT NULL CHECK (seats_left >= 0),
    price_cents INTEGER NOT NULL, UNIQUE (theater_id, movie_id, day, minutes));
CREATE INDEX IF NOT EXISTS showtimes_by_movie ON showtimes(movie_id, day);
CREATE TABLE IF NOT EXISTS bookings(id INTEGER PRIMARY KEY, idempotency_key TEXT UNIQUE, request TEXT NOT NULL,
    showtime_id INTEGER NOT NULL REFERENCES showtimes(id), num_tickets INTEGER NOT NULL CHECK (num_tickets > 0),
    seating TEXT NOT NULL, total_cents INTEGER NOT NULL);
"""


def _is_home(text: str) -> bool:
    ws = set(V.words(text))
    return bool(ws) and all(w in _HOME_WORDS or w.isdigit() for w in ws)


class ApiError(Exception):
    """Internal: becomes a structured error response in `BookingBackend.call`."""

    def __init__(self, code: str, message: str, argument: str | None = None, **details: Any):
        super().__init__(message)
        self.payload = {"code": code, "message": message} | ({"argument": argument} if argument else {}) | details


@dataclass(frozen=True)
class _Entry:
    id: int
    name: str
    aliases: tuple[str, ...] = ()  # other full names of the entity ("Spring Hills KS")
    hints: tuple[str, ...] = ()  # names that identify it inside a description (people, characters)


class _Index:
    """Fuzzy name lookup. Scores: 1 same key, .98 same significant words ("AMC Holiday" / "… Theater"),
    .95 alias, .8-.9 query words within the name, .7-.8 query words as prefixes ("San Fran"), .75-.85 name
    words within the query, .7 a person/character of the entity named in the query, else .95 × the
    character similarity of the keys. Below 0.6 nothing counts, so weak similarities are not computed."""

    def __init__(self, entries: list[_Entry], stop: set[str]):
        self.entries, self.stop = entries, stop
        self._cache: dict[tuple[str, frozenset[int] | None], list[tuple[float, _Entry]]] = {}
        self._prep = [(V.norm_key(e.name), {V.norm_key(a) for a in e.aliases},
                       [(self._words(n), n == e.name) for n in (e.name, *e.aliases)],
                       [set(V.words(h)) for h in e.hints if V.words(h)]) for e in entries]

    def _words(self, text: str) -> list[str]:
        ws = V.words(text)
        return [w for w in ws if w not in self.stop] or ws

    def _score(self, i: int, qk: str, qw: list[str], qset: set[str], sm: SequenceMatcher) -> float:
        key, alias_keys, names, hints = self._prep[i]
        if qk == key:
            return 1.0
        best = 0.95 if qk in alias_keys else 0.0
        for nw, is_name in names:
            if sorted(qw) == sorted(nw):
                best = max(best, 0.98 if is_name else 0.94)
            elif all(w in nw for w in qw):
                best = max(best, 0.8 + 0.1 * len(qw) / len(nw))
            elif all(any(n == w or (len(w) >= 3 and n.startswith(w)) for n in nw) for w in qw):
                best = max(best, 0.7 + 0.1 * len(qw) / len(nw))
            elif all(w in qw for w in nw):
                best = max(best, 0.75 + 0.1 * len(nw) / len(qw))
        if any(h <= qset for h in hints):
            best = max(best, 0.7)
        sm.set_seq1(key)
        if 0.95 * sm.real_quick_ratio() > max(best, 0.6) and 0.95 * sm.quick_ratio() > max(best, 0.6):
            best = max(best, 0.95 * sm.ratio())
        return best

    def ranked(self, query: str, within: set[int] | None = None) -> list[tuple[float, _Entry]]:
        cache_key = (query, None if within is None else frozenset(within))
        if cache_key in self._cache:  # agents repeat mentions; entries never change
            return self._cache[cache_key]
        qk = V.norm_key(query)
        if not qk:
            return []
        qw, qset, sm = self._words(query), set(V.words(query)), SequenceMatcher(None, "", qk)
        out = [(self._score(i, qk, qw, qset, sm), e) for i, e in enumerate(self.entries)
               if within is None or e.id in within]
        out.sort(key=lambda se: (-se[0], se[1].name))
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[cache_key] = out
        return out

    def candidates(self, query: str, within: set[int] | None = None, floor: float = 0.6) -> list[_Entry]:
        """Best matches for resolve_*: everything within 0.05 of the best score, at most 5."""
        ranked = self.ranked(query, within)
        if not ranked or ranked[0][0] < floor:
            return []
        return [e for s, e in ranked if s >= ranked[0][0] - 0.05][:5]

    def one(self, query: str, argument: str, within: set[int] | None = None) -> _Entry:
        """The entity a transactional argument names; not_found / ambiguous errors otherwise."""
        ranked = self.ranked(query, within)
        if not ranked or ranked[0][0] < 0.75:
            raise ApiError("not_found", f"no match for {argument}={query!r}", argument)
        top = [e for s, e in ranked if s >= ranked[0][0] - 0.02]
        if len(top) > 1 and ranked[0][0] < 1.0:
            raise ApiError("ambiguous", f"{argument}={query!r} matches several entries", argument,
                           candidates=[e.name for e in top[:5]])
        return ranked[0][1]


class BookingBackend:
    """A booking service over SQLite. `db_path` None uses a temporary database removed by `close()`; an
    existing database is reused as is (bookings persist). Thread-safe: one connection per thread."""

    def __init__(self, db_path: str | Path | None = None, *, catalogue: Catalogue | None = None,
                 ontology: Ontology | None = None, max_results: int = 10):
        self.ontology = ontology or load_ontology()
        self.max_results = max_results
        self._tmpdir = tempfile.mkdtemp(prefix="ctxlab-tickets-") if db_path is None else None
        self.db_path = Path(self._tmpdir, "tickets.db") if self._tmpdir else Path(db_path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._init_db(catalogue)
        self._load_index()
        self._apis: dict[str, Callable[[dict[str, str], str | None], dict[str, Any]]] = {
            "find_movies": self._find_movies, "find_theaters": self._find_theaters,
            "find_showtimes": self._find_showtimes, "get_movie_attribute": self._get_movie_attribute,
            "resolve_movie": self._resolve_movie, "resolve_location": self._resolve_location,
            "resolve_theater": self._resolve_theater, "check_tickets": self._check_tickets,
            "book_tickets": self._book_tickets}

    # ------------------------------------------------------------------------------------------- plumbing

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA busy_timeout = 30000")
            con.execute("PRAGMA foreign_keys = ON")
            con.execute("PRAGMA synchronous = NORMAL")
            self._local.con = con
            with self._lock:
                self._conns.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            for con in self._conns:
                con.close()
            self._conns.clear()
        self._local = threading.local()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> BookingBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _init_db(self, catalogue: Catalogue | None) -> None:
        try:
            con = self._conn()
            mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.DatabaseError as e:
            self.close()
            raise CtxlabError(f"{self.db_path}: not a usable SQLite database ({e})") from None
        if mode.lower() != "wal":
            raise CtxlabError(f"{self.db_path}: SQLite refused WAL mode ({mode})")
        con.execute("BEGIN IMMEDIATE")  # one initialiser even when several processes open a new file
        try:
            for stmt in _SCHEMA.split(";"):  # not executescript: it would commit the open transaction
                if stmt.strip():
                    con.execute(stmt)
            row = con.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
            if row is None:
                self._insert_catalogue(con, catalogue or default_catalogue())
            elif catalogue is not None and catalogue.fingerprint() != row[0]:
                raise CtxlabError(f"{self.db_path} holds catalogue {row[0]}, not {catalogue.fingerprint()}; "
                                  "use a new database path")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    @staticmethod
    def _insert_catalogue(con: sqlite3.Connection, cat: Catalogue) -> None:
        meta = {"fingerprint": cat.fingerprint(), "today": cat.today, "days": str(cat.days),
                "home_location_id": str(cat.home_location_id), "source": cat.source, "seed": str(cat.seed)}
        con.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        con.executemany("INSERT INTO locations VALUES (?, ?, ?, ?)",
                        [(x.id, x.name, x.city, x.state) for x in cat.locations])
        con.executemany("INSERT INTO movies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(m.id, m.title, m.genre, m.rating, m.duration_min, m.release_date, m.plot, m.other,
                          m.critic_score, m.audience_score) for m in cat.movies])
        con.executemany("INSERT INTO movie_people VALUES (?, ?, ?, ?)",
                        [(m.id, role, i, n) for m in cat.movies
                         for role, names in (("person", m.people), ("character", m.characters))
                         for i, n in enumerate(names)])
        con.executemany("INSERT INTO theaters VALUES (?, ?, ?, ?)",
                        [(t.id, t.name, t.location_id, ",".join(t.screenings)) for t in cat.theaters])
        con.executemany("INSERT INTO showtimes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [(s.id, s.movie_id, s.theater_id, s.day, s.minutes, s.screening, s.capacity, s.capacity,
                          s.price_cents) for s in cat.showtimes])

    def _load_index(self) -> None:
        con = self._conn()
        meta = dict(con.execute("SELECT key, value FROM meta"))
        self.today = date.fromisoformat(meta["today"])
        self.last_day = self.today + timedelta(days=int(meta["days"]) - 1)
        self.home_location_id = int(meta["home_location_id"])
        self.fingerprint = meta["fingerprint"]
        people: dict[int, dict[str, list[str]]] = {}
        for mid, role, name in con.execute("SELECT movie_id, role, name FROM movie_people ORDER BY 1, 2, position"):
            people.setdefault(mid, {"person": [], "character": []})[role].append(name)
        cols = ("id", "title", "genre", "rating", "duration_min", "release_date", "plot", "other", "critic_score",
                "audience_score")
        self.movies = {r[0]: dict(zip(cols, r, strict=True)) | {"people": people.get(r[0], {}).get("person", []),
                                                               "characters": people.get(r[0], {}).get("character",
                                                                                                      [])}
                       for r in con.execute("SELECT * FROM movies ORDER BY id")}
        self.locations = {r[0]: {"id": r[0], "name": r[1], "city": r[2], "state": r[3]}
                          for r in con.execute("SELECT * FROM locations ORDER BY id")}
        self.theaters = {r[0]: {"id": r[0], "name": r[1], "location_id": r[2], "screenings": r[3].split(",")}
                         for r in con.execute("SELECT * FROM theaters ORDER BY id")}
        abbrev = {v: k.upper() for k, v in STATE_ABBREVS.items()}
        self._movie_ix = _Index([_Entry(m["id"], m["title"], hints=tuple(m["people"] + m["characters"]))
                                 for m in self.movies.values()], _STOP)
        self._theater_ix = _Index([_Entry(t["id"], t["name"]) for t in self.theaters.values()], _THEATER_STOP)
        loc_entries = []
        for x in self.locations.values():
            aliases = [x["city"]] if x["state"] else []
            if x["state"] in abbrev:
                aliases.append(f"{x['city']} {abbrev[x['state']]}")
            if len(x["city"].split()) > 1:
                aliases.append("".join(w[0] for w in x["city"].split()))  # "SF"
            loc_entries.append(_Entry(x["id"], x["name"], tuple(aliases)))
        self._location_ix = _Index(loc_entries, _LOC_STOP)

    # --------------------------------------------------------------------------------------------- entry

    def call(self, name: str, args: dict[str, str], idempotency_key: str | None = None) -> dict[str, Any]:
        """Execute one API call; always returns a result dict (see the module docstring). The idempotency key
        matters only for book_tickets, the one API that writes; the others ignore it."""
        try:
            if not isinstance(name, str) or name not in self.ontology.apis or name not in self._apis:
                raise ApiError("unknown_api", f"unknown API {name!r}", valid=sorted(self._apis))
            if not isinstance(args, dict):
                raise ApiError("invalid_request", "args must be an object of argument name → string value")
            if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key):
                raise ApiError("invalid_request", "idempotency_key must be a non-empty string or None")
            clean = self._validate(name, args)
            response, meta = self._apis[name](clean, idempotency_key)
            return {"ok": True, "api": name, "response": response, "meta": meta}
        except ApiError as e:
            return {"ok": False, "api": name if isinstance(name, str) else repr(name), "error": e.payload}
        except sqlite3.OperationalError as e:  # e.g. still locked after the busy timeout
            return {"ok": False, "api": name, "error": {"code": "backend_busy", "message": str(e)}}

    def _validate(self, name: str, args: dict[str, Any]) -> dict[str, str]:
        spec = self.ontology.spec(name)
        allowed = spec.allowed_args()
        aliases = ARG_ALIASES.get(name, {})
        out = {}
        for k, v in args.items():
            if k not in allowed:
                raise ApiError("unknown_argument", f"{name} has no argument {k!r}", str(k), allowed=list(allowed))
            if not isinstance(v, str):
                raise ApiError("invalid_argument", f"{k} must be a string, got {type(v).__name__}", k)
            if not v.strip():
                raise ApiError("invalid_argument", f"{k} is empty", k)
            out[aliases.get(k, k)] = v.strip()
        for k in spec.required:
            if k not in out:
                raise ApiError("missing_argument", f"{name} requires {k}", k, required=list(spec.required))
        return out

    # ------------------------------------------------------------------------------------------ resolvers

    def _location(self, text: str) -> int:
        """A place; the user's home location for "nearby"-like text (also when nothing else in it matches)."""
        ws = set(V.words(text))
        if _is_home(text):
            return self.home_location_id
        try:
            return self._location_ix.one(text, "location").id
        except ApiError:
            if ws & _HOME_MARKERS:  # "nearest Miami Cinemas": the user still means near them
                return self.home_location_id
            raise

    def _theater(self, text: str, location_id: int | None = None) -> int:
        """A theater, preferring those at `location_id`; falls back to all theaters."""
        if location_id is not None:
            within = {t["id"] for t in self.theaters.values() if t["location_id"] == location_id}
            try:
                return self._theater_ix.one(text, "name.theater", within).id
            except ApiError:
                pass
        return self._theater_ix.one(text, "name.theater").id

    def _movie(self, text: str) -> int:
        return self._movie_ix.one(text, "name.movie").id

    def _day(self, args: dict[str, str]) -> date:
        text = args.get("date.showing", "today")
        d = V.parse_date(text, self.today)
        if d is None:
            raise ApiError("invalid_argument", f"date.showing={text!r} is not a date (try 'today', 'Friday', "
                                               "'April 12')", "date.showing")
        return d

    def _screenings(self, args: dict[str, str]) -> set[str] | None:
        if "type.screening" not in args:
            return None
        kinds = V.parse_screenings(args["type.screening"])
        if kinds is None:
            raise ApiError("invalid_argument", f"unknown type.screening {args['type.screening']!r}",
                           "type.screening", allowed=list(V.SCREENINGS))
        return kinds

    def _window(self, args: dict[str, str]) -> tuple[int, int] | None:
        try:
            return V.parse_time_preference(args["time.preference"]) if "time.preference" in args else None
        except ValueError as e:
            raise ApiError("invalid_argument", str(e), "time.preference") from None

    def _tickets(self, args: dict[str, str]) -> int:
        try:
            n = V.parse_tickets(args.get("num.tickets", "1"))
        except ValueError as e:  # several numbers, a decimal, a range: refused, never guessed
            raise ApiError("invalid_argument", f"num.tickets: {e}", "num.tickets") from None
        if n is None or not 1 <= n <= MAX_TICKETS:
            raise ApiError("invalid_argument", f"num.tickets={args.get('num.tickets')!r} is not a ticket count "
                                               f"between 1 and {MAX_TICKETS}", "num.tickets")
        return n

    def _showing(self, args: dict[str, str]) -> tuple[int, int, date, int]:
        movie, theater, day = self._movie(args["name.movie"]), self._theater(args["name.theater"]), self._day(args)
        minutes = V.parse_time(args["time.showing"])
        if minutes is None:
            raise ApiError("invalid_argument", f"time.showing={args['time.showing']!r} is not a clock time",
                           "time.showing")
        return movie, theater, day, minutes

    def _list(self, key: str, values: list[str], empty_key: str = "empty") -> dict[str, list[str]]:
        return {key: values[: self.max_results]} if values else {empty_key: [EMPTY]}

    def _days(self) -> tuple[str, str]:
        return self.today.isoformat(), self.last_day.isoformat()

    # ---------------------------------------------------------------------------------------------- APIs

    def _find_movies(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        loc = self._location(a["location"]) if "location" in a else None
        theater = self._theater(a["name.theater"], loc) if "name.theater" in a else None
        kinds = self._screenings(a)
        sql = ("SELECT DISTINCT s.movie_id FROM showtimes s JOIN theaters t ON t.id = s.theater_id "
               "WHERE s.day BETWEEN ? AND ?")
        params: list[Any] = list(self._days())
        if loc is not None and theater is None:
            sql, params = sql + " AND t.location_id = ?", params + [loc]
        if theater is not None:
            sql, params = sql + " AND s.theater_id = ?", params + [theater]
        if kinds:
            sql += f" AND s.screening IN ({','.join('?' * len(kinds))})"
            params += sorted(kinds)
        movies = [self.movies[r[0]] for r in self._conn().execute(sql, params)]
        movies = [m for m in movies if self._movie_matches(m, a)]
        return self._list("name.movie", [m["title"] for m in sorted(movies, key=self._movie_order(a))]), {}

    @staticmethod
    def _movie_order(a: dict[str, str]) -> Callable[[dict[str, Any]], Any]:
        """Best-reviewed first when reviews are asked about; by overlap with description.other; else by title."""
        if "review.critic" in a or "review.audience" in a:
            field = "critic_score" if "review.critic" in a else "audience_score"
            return lambda m: (-m[field], m["title"])
        if "description.other" in a:
            want = {V.singular(w) for w in V.words(a["description.other"])} - _STOP

            def overlap(m: dict[str, Any]) -> tuple[int, str]:
                have = {V.singular(w) for w in V.words(f"{m['other']} {m['plot']} {m['genre']}")}
                return -len(want & have), m["title"]
            return overlap
        return lambda m: m["title"]

    def _movie_matches(self, m: dict[str, Any], a: dict[str, str]) -> bool:
        if "name.genre" in a:
            want = {V.singular(_GENRE_SYNONYMS.get(V.singular(w), w)) for w in V.words(a["name.genre"])} - _STOP
            have = {V.singular(w) for w in V.words(m["genre"])}
            if not want or not (want <= have or have <= want):
                return False
        for arg, field in (("name.person", "people"), ("name.character", "characters")):
            if arg in a and not _Index([_Entry(0, n) for n in m[field]], set()).candidates(a[arg], floor=0.8):
                return False
        if "rating.movies" in a:
            rating = V.parse_rating(a["rating.movies"])
            if rating is None:
                raise ApiError("invalid_argument", f"unknown rating {a['rating.movies']!r}", "rating.movie",
                               allowed=list(V.RATINGS))
            if m["rating"] != rating:
                return False
        if "date.release" in a:
            year = re.search(r"\b(19|20)\d\d\b", a["date.release"])
            if year is None:
                raise ApiError("invalid_argument", f"date.release={a['date.release']!r} has no year", "date.release")
            if not m["release_date"].startswith(year.group()):
                return False
        for arg, field in (("review.critic", "critic_score"), ("review.audience", "audience_score")):
            if arg in a:
                floor = V.parse_percent(a[arg])
                if m[field] < (floor if floor is not None else 75):  # "highly rated" → 75%
                    return False
        return True

    def _find_theaters(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        loc = self._location(a.get("location", "nearby"))
        sql = ("SELECT DISTINCT t.name FROM theaters t JOIN showtimes s ON s.theater_id = t.id "
               "WHERE t.location_id = ? AND s.day BETWEEN ? AND ?")
        params: list[Any] = [loc, *self._days()]
        if "name.movie" in a:
            sql, params = sql + " AND s.movie_id = ?", params + [self._movie(a["name.movie"])]
        kinds = self._screenings(a)
        if kinds:
            sql += f" AND s.screening IN ({','.join('?' * len(kinds))})"
            params += sorted(kinds)
        names = [r[0] for r in self._conn().execute(sql + " ORDER BY t.name", params)]
        return self._list("name.theater", names), {"location": self.locations[loc]["name"]}

    def _find_showtimes(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        loc = self._location(a["location"]) if "location" in a else None
        movie, theater, day = self._movie(a["name.movie"]), self._theater(a["name.theater"], loc), self._day(a)
        kinds, window = self._screenings(a), self._window(a)
        rows = self._conn().execute("SELECT minutes, screening FROM showtimes WHERE movie_id = ? AND theater_id = ? "
                                    "AND day = ? ORDER BY minutes", (movie, theater, day.isoformat())).fetchall()
        times = [V.format_time(m) for m, kind in rows if (not kinds or kind in kinds)
                 and (window is None or window[0] <= m <= window[1])]
        return self._list("time.showing", times), {"date": day.isoformat()}

    def _get_movie_attribute(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        spec = self.ontology.spec("get_movie_attribute")
        attr = a["attribute"]
        if attr not in spec.response_keys:
            raise ApiError("invalid_argument", f"unknown attribute {attr!r}", "attribute",
                           allowed=list(spec.response_keys))
        m = self.movies[self._movie(a["name.movie"])]
        values = {"name.genre": [m["genre"]], "name.person": m["people"], "name.character": m["characters"],
                  "date.release": [V.format_date(date.fromisoformat(m["release_date"]))],
                  "description.plot": [m["plot"]], "duration.movie": [f"{m['duration_min']} minutes"],
                  "review.audience": [f"{m['audience_score']}%"],
                  "review.critic": [f"Rotten Tomatoes {m['critic_score']}%"], "rating.movie": [m["rating"]]}[attr]
        return {attr: list(values) or [EMPTY]}, {"name.movie": m["title"]}

    def _resolve_movie(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        found = self._movie_ix.candidates(a["name.movie"])
        return self._list("name.movie", [e.name for e in found], "name.movie"), {}

    def _resolve_location(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        if _is_home(a["location"]):
            return {"location": [self.locations[self.home_location_id]["name"]]}, {"home": True}
        found = self._location_ix.candidates(a["location"])
        return self._list("location", [e.name for e in found], "location"), {}

    def _resolve_theater(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        loc = self._location(a["location"])
        within = {t["id"] for t in self.theaters.values() if t["location_id"] == loc}
        found = self._theater_ix.candidates(a["name.theater"], within) if within else []
        return self._list("name.theater", [e.name for e in found], "name.theater"), {}

    def _check_tickets(self, a: dict[str, str], _key: str | None) -> tuple[dict, dict]:
        movie, theater, day, minutes = self._showing(a)
        n = self._tickets(a)
        self._window(a)  # validated; the exact time.showing decides
        row = self._conn().execute("SELECT id, seats_left FROM showtimes WHERE movie_id = ? AND theater_id = ? AND "
                                   "day = ? AND minutes = ?", (movie, theater, day.isoformat(), minutes)).fetchone()
        if row is None:
            return {"status": ["unavailable"]}, {"reason": "no_such_showtime"}
        ok = row[1] >= n
        return {"status": ["available" if ok else "unavailable"]}, ({"seats_left": row[1]} if ok else
                                                                    {"reason": "not_enough_seats",
                                                                     "seats_left": row[1]})

    def _book_tickets(self, a: dict[str, str], key: str | None) -> tuple[dict, dict]:
        movie, theater, day, minutes = self._showing(a)
        n, seating = self._tickets(a), a.get("seating", "any")
        con = self._conn()
        st = con.execute("SELECT id, price_cents FROM showtimes WHERE movie_id = ? AND theater_id = ? AND day = ? "
                         "AND minutes = ?", (movie, theater, day.isoformat(), minutes)).fetchone()
        request = json.dumps({"showtime": st[0] if st else [movie, theater, day.isoformat(), minutes],
                              "num_tickets": n, "seating": V.fold(seating)}, sort_keys=True)
        con.execute("BEGIN IMMEDIATE")  # serialises writers; the conditional UPDATE is the seat guard
        try:
            if key is not None:
                prev = con.execute("SELECT id, request, num_tickets, total_cents, showtime_id FROM bookings "
                                   "WHERE idempotency_key = ?", (key,)).fetchone()
                if prev is not None:
                    con.execute("COMMIT")
                    if prev[1] != request:
                        raise ApiError("idempotency_conflict", "idempotency_key was used for a different booking",
                                       booking_id=prev[0])
                    return {"status": ["success"]}, self._booking_meta(prev[0], prev[4], prev[2], prev[3], True)
            if st is None:
                con.execute("COMMIT")
                return {"status": ["failure"]}, {"reason": "no_such_showtime"}
            cur = con.execute("UPDATE showtimes SET seats_left = seats_left - ? WHERE id = ? AND seats_left >= ?",
                              (n, st[0], n))
            if cur.rowcount != 1:
                left = con.execute("SELECT seats_left FROM showtimes WHERE id = ?", (st[0],)).fetchone()[0]
                con.execute("COMMIT")
                return {"status": ["failure"]}, {"reason": "sold_out" if left == 0 else "not_enough_seats",
                                                 "seats_left": left}
            total = n * st[1]
            bid = con.execute("INSERT INTO bookings(idempotency_key, request, showtime_id, num_tickets, seating, "
                              "total_cents) VALUES (?, ?, ?, ?, ?, ?)", (key, request, st[0], n, seating, total)
                              ).lastrowid
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return {"status": ["success"]}, self._booking_meta(bid, st[0], n, total, False)

    def _booking_meta(self, booking_id: int, showtime_id: int, n: int, total: int, replayed: bool) -> dict:
        mid, tid, day, minutes, left = self._conn().execute(
            "SELECT movie_id, theater_id, day, minutes, seats_left FROM showtimes WHERE id = ?",
            (showtime_id,)).fetchone()
        return {"booking_id": booking_id, "replayed": replayed, "name.movie": self.movies[mid]["title"],
                "name.theater": self.theaters[tid]["name"], "date": day, "time.showing": V.format_time(minutes),
                "num.tickets": n, "price.total": f"${total / 100:.2f}", "seats_left": left}

    # ------------------------------------------------------------------------------------------ inspection

    def bookings(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT id, idempotency_key, showtime_id, num_tickets, seating, total_cents "
                                    "FROM bookings ORDER BY id").fetchall()
        return [dict(zip(("id", "idempotency_key", "showtime_id", "num_tickets", "seating", "total_cents"), r,
                         strict=True)) for r in rows]

    def showtime(self, showtime_id: int) -> dict[str, Any]:
        r = self._conn().execute("SELECT * FROM showtimes WHERE id = ?", (showtime_id,)).fetchone()
        if r is None:
            raise CtxlabError(f"no showtime {showtime_id}")
        keys = ("id", "movie_id", "theater_id", "day", "minutes", "screening", "capacity", "seats_left", "price_cents")
        return dict(zip(keys, r, strict=True))


def result_to_items(result: dict[str, Any]) -> tuple[ApiResponse, ...]:
    """A call result as TSV response items: one `<PR>` per response key; errors as key `error` with the code
    and message as values."""
    if not result.get("ok"):
        err = result["error"]
        return (ApiResponse(result["api"], "error", (err["code"], err["message"])),)
    return tuple(ApiResponse(result["api"], k, tuple(v)) for k, v in result["response"].items())


def format_result(result: dict[str, Any]) -> str:
    return format_items(result_to_items(result))

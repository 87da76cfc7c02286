"""A deterministic, seeded movie catalogue for the booking backend: movies, locations, theaters, showtimes.

Entity names come from the shipped TicketTalk shard (train-bc.tsv) when it is given: official names in API
responses and names used in booking calls, cleaned, merged across spellings ("Back Country" / "Backcountry")
and kept when seen at least twice; movie attributes, theater locations, which theater shows which movie and
at what times are taken from the API calls and responses where the data has them. Without the shard a
built-in list is used. Everything else is drawn from `random.Random(seed)` over sorted inputs, so the same
inputs always give the same catalogue (`Catalogue.fingerprint()`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from difflib import SequenceMatcher
from pathlib import Path

from ctxlab.apps.tickets import values as V
from ctxlab.apps.tickets.ontology import shipped_train_tsv
from ctxlab.tasks.tickettalk.formats import ApiCall, ApiResponse, Example, read_tsv

DEFAULT_TODAY = date(2020, 3, 13)  # a Friday in the TM-3 collection period
GENRES = ("action", "comedy", "drama", "horror", "romantic comedy", "thriller", "animation", "family",
          "science fiction", "documentary", "adventure", "mystery")
PRICES_CENTS = {"standard": 1250, "3D": 1500, "XD": 1550, "Dolby": 1650, "IMAX": 1750, "4DX": 1900, "RPX": 1600}
DESCRIPTIONS = ("award winning", "family friendly", "based on a true story", "critically acclaimed",
                "crowd pleaser", "based on a best-selling book", "indie film", "big-budget blockbuster")
PREMISES = ("a heist that goes wrong", "a family secret that resurfaces", "an unlikely friendship",
            "a race against time", "a small town with a big problem", "a journey home", "a rivalry that turns "
            "into romance", "a mystery in an old house", "a team of misfits", "a second chance at love",
            "survival against the odds", "a world on the brink")
BUILTIN_TIMES = ("11:00am", "12:30pm", "1:15pm", "2:00pm", "3:30pm", "4:30pm", "5:00pm", "6:10pm", "6:40pm",
                 "7:10pm", "7:30pm", "8:15pm", "9:10pm", "9:45pm", "10:55pm")
BUILTIN_PEOPLE = ("Matt Damon", "Melissa McCarthy", "James Cameron", "Noah Schnapp", "Ryan Reynolds",
                  "Will Smith", "Bruce Willis", "Emma Stone", "Viola Davis", "Keanu Reeves", "Greta Gerwig")

# (title, genre, rating, people, characters); the names seen in TicketTalk dialogues plus 2019-20 releases.
BUILTIN_MOVIES: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("No Time To Die", "action", "PG-13", ("Daniel Craig", "Rami Malek"), ("James Bond",)),
    ("Mulan", "action", "PG-13", ("Yifei Liu",), ("Mulan",)),
    ("Emma", "romantic comedy", "PG", ("Anya Taylor-Joy",), ("Emma Woodhouse",)),
    ("1917", "drama", "R", ("George MacKay", "Sam Mendes"), ()),
    ("Parasite", "thriller", "R", ("Bong Joon-ho",), ()),
    ("Knives Out", "mystery", "PG-13", ("Daniel Craig", "Rian Johnson"), ("Benoit Blanc",)),
    ("Jojo Rabbit", "comedy", "PG-13", ("Taika Waititi",), ()),
    ("Dolittle", "family", "PG", ("Robert Downey Jr.",), ("Doctor Dolittle",)),
    ("Star Wars: The Rise of Skywalker", "science fiction", "PG-13", ("Daisy Ridley",), ("Rey",)),
    ("Birds of Prey", "action", "R", ("Margot Robbie",), ("Harley Quinn",)),
    ("Bad Boys for Life", "action", "R", ("Will Smith", "Martin Lawrence"), ()),
    ("Sonic the Hedgehog", "family", "PG", ("Jim Carrey",), ("Sonic",)),
    ("The Invisible Man", "horror", "R", ("Elisabeth Moss",), ()),
    ("Onward", "animation", "PG", ("Tom Holland", "Chris Pratt"), ()),
    ("Little Women", "drama", "PG", ("Saoirse Ronan", "Greta Gerwig"), ("Jo March",)),
    ("Frozen II", "animation", "PG", ("Idina Menzel",), ("Elsa",)),
    ("The Gentlemen", "action", "R", ("Matthew McConaughey", "Guy Ritchie"), ()),
    ("Joker", "drama", "R", ("Joaquin Phoenix",), ("Joker",)),
    ("Jumanji: The Next Level", "adventure", "PG-13", ("Dwayne Johnson",), ()),
    ("Ford v Ferrari", "drama", "PG-13", ("Matt Damon", "Christian Bale"), ()),
    ("The Call of the Wild", "adventure", "PG", ("Harrison Ford",), ("Buck",)),
    ("Like a Boss", "comedy", "R", ("Tiffany Haddish",), ()),
    ("Not My Problem", "comedy", "PG-13", ("Melissa McCarthy",), ()),
    ("Family Jewels", "romantic comedy", "PG-13", ("Ryan Reynolds",), ()),
    ("Shuttered", "horror", "R", ("Noah Schnapp",), ()),
    ("Backcountry", "documentary", "G", ("Clyde Stewart",), ()),
    ("Beyond the Storm", "action", "PG-13", ("James Cameron",), ("Captain John",)),
    ("Stella's House", "drama", "PG", ("Emma Stone",), ("Stella",)),
    ("Five Ways to Wacky", "comedy", "PG", ("Melissa McCarthy",), ()),
    ("King Johnny", "drama", "R", ("Keanu Reeves",), ("Johnny",)),
)
BUILTIN_LOCATIONS = ("Spring Hills, Kansas", "San Francisco, California", "Santa Barbara, California",
                     "Creek's End, Oregon", "Brando, Texas", "Petaluma, California", "Oak Valley, Arkansas",
                     "Hillview, Washington", "Cedar Creek, North Carolina", "Land's End, Montana")
BUILTIN_THEATERS = (("AMC Mountain 16", "Spring Hills, Kansas"), ("Cinemark Downtown", "Spring Hills, Kansas"),
                    ("Marcus Majestic", "Spring Hills, Kansas"), ("AMC Mercado 24", "Santa Barbara, California"),
                    ("AMC Holiday Theater", "Creek's End, Oregon"), ("Cinemark Plaza 24", "Brando, Texas"),
                    ("Boulevard 14 Cinema", "Petaluma, California"), ("Milford Theater", "Oak Valley, Arkansas"),
                    ("AMC Metreon 16", "San Francisco, California"), ("Century 14 Downtown", "Hillview, Washington"),
                    ("Regal Jack London", "Cedar Creek, North Carolina"),
                    ("Alamo Drafthouse South Lamar", "Land's End, Montana"),
                    ("Regal Winrock IMAX & RPX", "Brando, Texas"),
                    ("AMC Boston Common 19", "Santa Barbara, California"))
# Fixed showings of the built-in catalogue (movie, theater, daily times); more are drawn at random.
BUILTIN_SHOWS = (("No Time To Die", "AMC Mountain 16", ("4:30pm", "7:10pm", "9:45pm")),
                 ("Mulan", "AMC Mountain 16", ("5:00pm", "7:30pm")),
                 ("No Time To Die", "AMC Mercado 24", ("5:00pm", "9:10pm")),
                 ("Mulan", "Cinemark Downtown", ("6:10pm", "9:10pm")),
                 ("Emma", "Boulevard 14 Cinema", ("4:30pm", "6:40pm")),
                 ("Family Jewels", "AMC Holiday Theater", ("5:00pm", "7:10pm", "10:55pm")),
                 ("Beyond the Storm", "AMC Metreon 16", ("6:10pm", "8:15pm")))

STATE_ABBREVS = {a.casefold(): name for a, name in (pair.split(" ", 1) for pair in (
    "AL Alabama|AK Alaska|AZ Arizona|AR Arkansas|CA California|CO Colorado|CT Connecticut|DE Delaware|FL Florida|"
    "GA Georgia|HI Hawaii|ID Idaho|IL Illinois|IN Indiana|IA Iowa|KS Kansas|KY Kentucky|LA Louisiana|ME Maine|"
    "MD Maryland|MA Massachusetts|MI Michigan|MN Minnesota|MS Mississippi|MO Missouri|MT Montana|NE Nebraska|"
    "NV Nevada|NH New Hampshire|NJ New Jersey|NM New Mexico|NY New York|NC North Carolina|ND North Dakota|OH Ohio|"
    "OK Oklahoma|OR Oregon|PA Pennsylvania|RI Rhode Island|SC South Carolina|SD South Dakota|TN Tennessee|TX Texas|"
    "UT Utah|VT Vermont|VA Virginia|WA Washington|WV West Virginia|WI Wisconsin|WY Wyoming").split("|"))}
STATES = {name.casefold(): name for name in STATE_ABBREVS.values()}
_PLACEHOLDER_WORDS = {"near", "nearby", "me", "my", "you", "your", "here", "local", "current", "closest",
                      "nearest", "around", "area", "automatic", "any", "home", "theater", "theaters", "location"}


@dataclass(frozen=True)
class Movie:
    id: int
    title: str
    genre: str
    rating: str
    duration_min: int
    release_date: str  # ISO
    plot: str
    other: str
    people: tuple[str, ...]
    characters: tuple[str, ...]
    critic_score: int
    audience_score: int

    def attribute(self, key: str) -> list[str]:
        """The values get_movie_attribute returns for one ontology attribute key."""
        return {
            "name.genre": [self.genre], "name.person": list(self.people), "name.character": list(self.characters),
            "date.release": [V.format_date(date.fromisoformat(self.release_date))],
            "description.plot": [self.plot], "duration.movie": [f"{self.duration_min} minutes"],
            "review.audience": [f"{self.audience_score}%"], "review.critic": [f"Rotten Tomatoes {self.critic_score}%"],
            "rating.movie": [self.rating],
        }[key]


@dataclass(frozen=True)
class Location:
    id: int
    name: str  # "City, State"
    city: str
    state: str


@dataclass(frozen=True)
class Theater:
    id: int
    name: str
    location_id: int
    screenings: tuple[str, ...]


@dataclass(frozen=True)
class Showtime:
    id: int
    movie_id: int
    theater_id: int
    day: str  # ISO date
    minutes: int  # after midnight
    screening: str
    capacity: int
    price_cents: int


@dataclass(frozen=True)
class Catalogue:
    movies: tuple[Movie, ...]
    locations: tuple[Location, ...]
    theaters: tuple[Theater, ...]
    showtimes: tuple[Showtime, ...]
    home_location_id: int
    today: str  # ISO date of "today"
    days: int
    seed: int
    source: str  # "builtin" or the shard's file name

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def split_location(text: str) -> tuple[str, str]:
    """'Spring Hills Kansas' / 'Petaluma, CA' → (city, state); state '' when none is recognised."""
    s = re.sub(r"\s+", " ", text.replace(",", " , ")).strip(" ,")
    low = V.fold(s)
    for name in sorted(STATES, key=len, reverse=True):
        if low.endswith(" " + name) and len(low) > len(name) + 1:
            return s[: -len(name)].strip(" ,"), STATES[name]
    m = re.fullmatch(r"(.+?)[ ,]+([A-Za-z]{2})\.?", s)
    if m and m.group(2).casefold() in STATE_ABBREVS and (m.group(2).isupper() or "," in s[m.end(1):m.start(2)]):
        return m.group(1).strip(" ,"), STATE_ABBREVS[m.group(2).casefold()]
    return s, ""


def _clean(value: str) -> str | None:
    """Strip quotes and trailing punctuation; reject glued lists, times and other noise in data values."""
    v = value.strip().strip("\"'\u201c\u201d\u2018\u2019").strip().rstrip(".,:;!").strip()
    if not (2 <= len(v) <= 60) or re.search(r",\S", v) or "\\" in v:
        return None
    if not re.search(r"[A-Za-z]", v) and not re.fullmatch(r"\d{3,4}", v):  # keep titles such as "1917"
        return None
    if re.match(r"\d{1,2}:\d\d", v) or re.search(r"[\"()<>\[\]]|[a-z]{3,}[A-Z]|[a-z]\.[A-Za-z]", v):
        return None  # glued text such as "10:05pmFamily Jewels" or "showingNot My Problem"
    return None if v.casefold() in ("empty", "_empty_", "{}") else v


_GENERIC_THEATER = {"theater", "theatre", "theaters", "theatres", "cinema", "cinemas", "movies", "movie"}
_CHAINS = {"amc", "regal", "cinemark", "century", "harkins", "marcus", "landmark", "ipic", "downtown", "cinamark"}


def _movie_ok(v: str) -> bool:
    return not re.match(r"(the|that|a|this)?\s*(movie|one|film)\b", v, re.I)


def _theater_ok(v: str) -> bool:
    """Not a bare chain or generic word ("AMC", "Regal Cinema", "the theater")."""
    ws = [w for w in V.words(v) if w not in _GENERIC_THEATER and w != "the"]
    return bool(ws) and not (len(ws) == 1 and ws[0] in _CHAINS)


def _theater_merge_key(key_words: list[str]) -> str:
    return " ".join(sorted(w for w in key_words if w not in _GENERIC_THEATER))


def _location_ok(v: str) -> bool:
    ws = set(V.words(v))
    return not ws & _PLACEHOLDER_WORDS and not re.search(r"\b(close|something|of|please|station|downtown)\b", v,
                                                          re.I) and V.fold(v) not in STATES


class _Names:
    """Counts spellings of one entity type and merges them into canonical names."""

    def __init__(self, ok=lambda v: True, merge_key=lambda ws: "") -> None:
        self.counts: Counter[str] = Counter()
        self.ok, self.merge_key = ok, merge_key

    def add(self, value: str, weight: int = 1) -> None:
        v = _clean(value)
        if v and V.norm_key(v) and self.ok(v):
            self.counts[v] += weight

    def canonical(self, min_count: int = 2) -> dict[str, str]:
        """key → canonical surface form (the most frequent spelling). Spellings with one key, one merge key
        (e.g. word order), or near-identical keys whose digits agree ("Doolittle" → "Dolittle", but not
        "Frozen" → "Frozen 2") form one group."""
        by_key: dict[str, Counter[str]] = defaultdict(Counter)
        for v, n in self.counts.items():
            by_key[V.norm_key(v)][v] += n
        groups = sorted(by_key.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        merged: dict[str, Counter[str]] = {}
        alias: dict[str, str] = {}
        by_merge_key: dict[str, str] = {}
        merged_mk: dict[str, str] = {}
        for key, spellings in groups:
            mk = self.merge_key(V.words(next(iter(spellings))))
            target = by_merge_key.get(mk) if mk else None
            for k in merged if target is None else ():
                a, b = (mk, merged_mk[k]) if mk and merged_mk[k] else (key, k)
                sm = SequenceMatcher(None, a, b)
                if (len(a) >= 8 and re.findall(r"\d+", key) == re.findall(r"\d+", k)
                        and sm.real_quick_ratio() >= 0.87 and sm.quick_ratio() >= 0.87 and sm.ratio() >= 0.87):
                    target = k
                    break
            if target is None:
                merged[key] = Counter(spellings)
                merged_mk[key] = mk
                target = key
            else:
                merged[target].update(spellings)
            alias[key] = target
            if mk:
                by_merge_key.setdefault(mk, target)
        out = {}
        for key, target in alias.items():
            spellings = merged[target]
            if sum(spellings.values()) >= min_count:
                out[key] = min(spellings, key=lambda s: (-spellings[s], s))
        return out


def _calls_with_responses(ex: Example) -> Iterable[tuple[ApiCall, ApiResponse | None]]:
    seq = list(ex.history or ()) + [ex.head]
    for i, it in enumerate(seq):
        if isinstance(it, ApiCall):
            nxt = seq[i + 1] if i + 1 < len(seq) else None
            yield it, nxt if isinstance(nxt, ApiResponse) and nxt.name == it.name else None
    if ex.target.call is not None:
        yield ex.target.call, None


class _Mined:
    """Everything the catalogue takes from the shard, before canonicalisation."""

    def __init__(self, examples: Iterable[Example]):
        self.movies, self.locations = _Names(_movie_ok), _Names(_location_ok)
        self.theaters = _Names(_theater_ok, _theater_merge_key)
        self.theater_loc: list[tuple[str, str]] = []
        self.shows: list[tuple[str, str]] = []  # (movie, theater)
        self.times: list[tuple[str, str, str]] = []  # (movie, theater, time)
        self.attrs: list[tuple[str, str, str]] = []  # (movie, key, value)
        seen = set()
        for ex in examples:
            for call, resp in _calls_with_responses(ex):
                key = (call, resp)
                if key in seen:  # histories repeat across rows of one dialogue
                    continue
                seen.add(key)
                self._add(call, resp)

    def _add(self, call: ApiCall, resp: ApiResponse | None) -> None:
        a = call.arg_dict()
        vals = list(resp.values) if resp is not None else []
        rkey = resp.key if resp is not None else ""
        loc = a.get("location", "")
        if loc:
            self.locations.add(loc)
        if call.name in ("book_tickets", "check_tickets", "find_showtimes", "find_theaters") and "name.movie" in a:
            self.movies.add(a["name.movie"])
        if call.name in ("book_tickets", "check_tickets", "find_showtimes", "find_movies") and "name.theater" in a:
            self.theaters.add(a["name.theater"])
        if rkey == "name.movie":
            for v in vals:
                self.movies.add(v)
                if "name.theater" in a:
                    self.shows.append((v, a["name.theater"]))
        elif rkey == "name.theater":
            for v in vals:
                self.theaters.add(v)
                if loc:
                    self.theater_loc.append((v, loc))
                if "name.movie" in a:
                    self.shows.append((a["name.movie"], v))
        elif rkey == "location" and call.name == "resolve_location":
            for v in vals:
                self.locations.add(v, 2)
        elif rkey == "time.showing" and "name.movie" in a and "name.theater" in a:
            self.times.extend((a["name.movie"], a["name.theater"], v) for v in vals)
        elif call.name == "get_movie_attribute" and resp is not None and "name.movie" in a:
            self.attrs.extend((a["name.movie"], rkey, v) for v in vals)
        if call.name == "find_movies" and loc and "name.theater" in a:
            self.theater_loc.append((a["name.theater"], loc))
        if call.name == "book_tickets" and {"name.movie", "name.theater", "time.showing"} <= set(a):
            self.times.append((a["name.movie"], a["name.theater"], a["time.showing"]))


def _majority(values: Iterable[str]) -> str | None:
    """The most frequent value, votes pooled across case and accents; its most frequent spelling; ties by text."""
    c = Counter(values)
    groups: dict[str, int] = Counter()
    for v, n in c.items():
        groups[V.fold(v)] += n
    if not groups:
        return None
    best = min(groups, key=lambda g: (-groups[g], g))
    return min((v for v in c if V.fold(v) == best), key=lambda v: (-c[v], v))


def build_catalogue(tsv: str | Path | None = None, *, seed: int = 0, today: date = DEFAULT_TODAY,
                    days: int = 7) -> Catalogue:
    """Build the catalogue from a TicketTalk split TSV (`tsv`), or from the built-in lists when None."""
    rng = random.Random(seed)
    builtin = {V.norm_key(m[0]): m for m in BUILTIN_MOVIES}
    times_vocab = [V.parse_time(t) for t in BUILTIN_TIMES]
    if tsv is None:
        source = "builtin"
        titles = [m[0] for m in BUILTIN_MOVIES]
        loc_names = list(BUILTIN_LOCATIONS)
        theater_names = [t for t, _ in BUILTIN_THEATERS]
        votes = {t: loc for t, loc in BUILTIN_THEATERS}
        pair_times: dict[tuple[str, str], set[int]] = {(m, t): {V.parse_time(x) for x in ts}
                                                       for m, t, ts in BUILTIN_SHOWS}
        shows = set(pair_times)
        attrs: dict[tuple[str, str], str] = {}
        people: dict[str, list[str]] = {}
        home = BUILTIN_LOCATIONS[0]
    else:
        source = Path(tsv).name
        mined = _Mined(read_tsv(tsv))
        mc, tc, lc = mined.movies.canonical(), mined.theaters.canonical(), mined.locations.canonical()
        titles, theater_names = sorted(set(mc.values())), sorted(set(tc.values()))

        def canon(table: dict[str, str], value: str) -> str | None:
            v = _clean(value)
            return table.get(V.norm_key(v)) if v else None

        lc = {key: (f"{c}, {st}" if st else name) for key, name in lc.items() for c, st in [split_location(name)]}
        cities: dict[str, set[str]] = defaultdict(set)
        for name in lc.values():
            city, state = split_location(name)
            if state:
                cities[V.norm_key(city)].add(name)
        for key, name in list(lc.items()):  # "Spring Hills" → "Spring Hills, Kansas" when the city is unique
            if not split_location(name)[1] and len(cities.get(V.norm_key(name), ())) == 1:
                lc[key] = next(iter(cities[V.norm_key(name)]))
        loc_names = sorted(set(lc.values()))
        loc_counts: Counter[str] = Counter()
        for v, n in mined.locations.counts.items():
            if (k := V.norm_key(v)) in lc:
                loc_counts[lc[k]] += n
        home = min(loc_counts, key=lambda x: (-loc_counts[x], x)) if loc_counts else loc_names[0]
        tl = defaultdict(list)
        for t, loc in mined.theater_loc:
            ct, cl = canon(tc, t), canon(lc, loc)
            if ct and cl:
                tl[ct].append(cl)
        votes = {t: _majority(v) for t, v in tl.items()}
        shows = {(m, t) for m, t in ((canon(mc, a), canon(tc, b)) for a, b in mined.shows) if m and t}
        pair_times = defaultdict(set)
        for m, t, tm in mined.times:
            cm, ct, minutes = canon(mc, m), canon(tc, t), V.parse_time(tm)
            if cm and ct and minutes is not None and minutes >= 10 * 60:
                pair_times[(cm, ct)].add(minutes)
                shows.add((cm, ct))
        times_vocab = sorted(set(times_vocab) | {x for s in pair_times.values() for x in s})
        by_attr: dict[tuple[str, str], list[str]] = defaultdict(list)
        for m, key, val in mined.attrs:
            cm, v = canon(mc, m), val.strip().rstrip(".").strip()
            if cm and v:
                by_attr[(cm, key)].append(v)
        attrs = {k: _majority(v) for k, v in by_attr.items()}
        people = {}
        for (m, key), vals in sorted(by_attr.items()):
            names = Counter(p.removesuffix("'s").removesuffix("\u2019s") for p in map(_clean, vals) if p)
            if key == "name.person" and names:
                people[m] = sorted(names, key=lambda p: (-names[p], p))[:2]
        if not titles or not theater_names or not loc_names:
            raise ValueError(f"{tsv}: too few entities to build a catalogue")

    locations = []
    for i, name in enumerate(sorted(set(loc_names)), 1):
        city, state = split_location(name)
        locations.append(Location(i, name, city, state))
    loc_id = {loc.name: loc.id for loc in locations}

    movies = []
    for i, title in enumerate(titles, 1):
        spec = builtin.get(V.norm_key(title))
        genre = attrs.get((title, "name.genre")) or (spec[1] if spec else rng.choice(GENRES))
        rating = V.parse_rating(attrs.get((title, "rating.movie"), "")) or (spec[2] if spec else
                                                                          rng.choice(V.RATINGS[:4]))
        lead = people.get(title) or list(spec[3] if spec else rng.sample(BUILTIN_PEOPLE, 1))
        chars = list(spec[4]) if spec else []
        if (title, "name.character") in attrs:
            chars = [attrs[(title, "name.character")].removesuffix("'s").removesuffix("\u2019s")]
        plot = (attrs.get((title, "description.plot"))
                or f"{lead[0]} stars in a {genre} film about {rng.choice(PREMISES)}.")
        critic = V.parse_percent(attrs.get((title, "review.critic"), "")) or rng.randint(40, 98)
        audience = V.parse_percent(attrs.get((title, "review.audience"), "")) or rng.randint(45, 98)
        release = today - timedelta(days=rng.randint(0, 120))
        movies.append(Movie(i, title, genre, rating, rng.randint(85, 165), release.isoformat(), plot,
                            rng.choice(DESCRIPTIONS), tuple(lead), tuple(chars), critic, audience))
    movie_id = {m.title: m.id for m in movies}

    theaters = []
    for i, name in enumerate(theater_names, 1):
        loc = votes.get(name) or rng.choice(locations).name
        kinds = ["standard"] + [s for s in V.SCREENINGS[1:] if re.search(rf"\b{s}\b", name, re.I)]
        for s, p in (("IMAX", 0.5), ("3D", 0.4), ("Dolby", 0.3), ("XD", 0.2)):
            if rng.random() < p and s not in kinds:
                kinds.append(s)
        theaters.append(Theater(i, name, loc_id[loc], tuple(kinds)))
    theater_id = {t.name: t.id for t in theaters}

    showtimes = []
    pairs = {(movie_id[m], theater_id[t]) for m, t in shows if m in movie_id and t in theater_id}
    for t in theaters:
        for m in rng.sample(movies, min(len(movies), 6)):
            pairs.add((m.id, t.id))
    times_by_pair = {(movie_id[m], theater_id[t]): v for (m, t), v in pair_times.items()
                     if m in movie_id and t in theater_id}
    sid = 0
    for mid, tid in sorted(pairs):
        theater = theaters[tid - 1]
        times = sorted(times_by_pair.get((mid, tid)) or rng.sample(times_vocab, rng.randint(2, 4)))[:6]
        kinds = [rng.choice(theater.screenings) if rng.random() < 0.3 else "standard" for _ in times]
        capacity = rng.choice((40, 60, 80, 120, 150))
        for d in range(days):
            day = (today + timedelta(days=d)).isoformat()
            for minutes, kind in zip(times, kinds, strict=True):
                sid += 1
                showtimes.append(Showtime(sid, mid, tid, day, minutes, kind, capacity, PRICES_CENTS[kind]))
    return Catalogue(tuple(movies), tuple(locations), tuple(theaters), tuple(showtimes), loc_id[home],
                     today.isoformat(), days, seed, source)


def default_catalogue(seed: int = 0) -> Catalogue:
    """From the shipped train-bc.tsv when present, else from the built-in lists."""
    return build_catalogue(shipped_train_tsv(), seed=seed)

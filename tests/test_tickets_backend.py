"""TicketTalk booking backend: API contracts, transactions under concurrency, idempotency, the catalogue."""

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import pytest

from ctxlab.apps.tickets import values as V
from ctxlab.apps.tickets.backend import EMPTY, BookingBackend, format_result, result_to_items
from ctxlab.apps.tickets.catalogue import BUILTIN_MOVIES, build_catalogue, split_location
from ctxlab.apps.tickets.ontology import BUILTIN_APIS, parse_ontology
from ctxlab.errors import CtxlabError
from ctxlab.tasks.tickettalk.formats import ApiCall, parse_items, read_tsv

ONT = parse_ontology(BUILTIN_APIS, "builtin")
NTTD = {"name.movie": "No Time To Die", "name.theater": "AMC Mountain 16"}  # a built-in showing: 4:30, 7:10, 9:45pm


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    b = BookingBackend(tmp_path_factory.mktemp("db") / "t.db", catalogue=build_catalogue(), ontology=ONT)
    yield b
    b.close()


def _tiny(tmp_path, seats: int) -> BookingBackend:
    cat = build_catalogue()
    cat = dataclasses.replace(cat, showtimes=tuple(dataclasses.replace(s, capacity=seats) for s in cat.showtimes))
    return BookingBackend(tmp_path / "tiny.db", catalogue=cat, ontology=ONT)


def _ok(result: dict) -> dict:
    assert result["ok"], result
    json.dumps(result)  # JSON-serialisable
    return result["response"]


def _err(result: dict, code: str, argument: str | None = None) -> dict:
    assert not result["ok"] and result["error"]["code"] == code, result
    if argument:
        assert result["error"]["argument"] == argument
    json.dumps(result)
    return result["error"]


# ------------------------------------------------------------------------------------------- contracts


SUCCESS_CALLS = {
    "find_movies": {"location": "Spring Hills, Kansas"},
    "find_theaters": {"location": "Spring Hills, Kansas", "name.movie": "No Time To Die"},
    "find_showtimes": dict(NTTD),
    "get_movie_attribute": {"name.movie": "No Time To Die", "attribute": "name.person"},
    "resolve_movie": {"name.movie": "the new James Bond movie"},
    "resolve_location": {"location": "SF"},
    "resolve_theater": {"name.theater": "the AMC", "location": "Creek's End, Oregon"},
    "check_tickets": {**NTTD, "time.showing": "7:10pm"},
    "book_tickets": {**NTTD, "time.showing": "9:45pm", "num.tickets": "1"},
}


@pytest.mark.parametrize("api", sorted(BUILTIN_APIS))
def test_every_api_answers_in_the_ontology_schema(backend, api):
    spec = ONT.spec(api)
    response = _ok(backend.call(api, SUCCESS_CALLS[api]))
    assert set(response) <= set(spec.response_keys) and response
    for values in response.values():
        assert values and all(isinstance(v, str) and v for v in values)
    if spec.response_type == "boolean":
        assert response["status"][0] in spec.true_values
    # serialisable into the split TSV form, and parsed back unchanged
    items = result_to_items(backend.call(api, SUCCESS_CALLS[api]) if api != "book_tickets" else
                            {"ok": True, "api": api, "response": response})
    assert parse_items(format_result({"ok": True, "api": api, "response": response})) == list(items)


@pytest.mark.parametrize("api", sorted(BUILTIN_APIS))
def test_every_api_rejects_bad_arguments(backend, api):
    spec = ONT.spec(api)
    good = SUCCESS_CALLS[api]
    _err(backend.call(api, {**good, "colour": "red"}), "unknown_argument", "colour")
    key = next(iter(good))
    _err(backend.call(api, {**good, key: 7}), "invalid_argument", key)
    _err(backend.call(api, {**good, key: "  "}), "invalid_argument", key)
    for req in spec.required:
        err = _err(backend.call(api, {k: v for k, v in good.items() if k != req}), "missing_argument", req)
        assert err["required"] == list(spec.required)
    _err(backend.call(api, ["not", "a", "dict"]), "invalid_request")


def test_unknown_api_and_bad_idempotency_key(backend):
    err = _err(backend.call("cancel_tickets", {}), "unknown_api")
    assert "book_tickets" in err["valid"]
    _err(backend.call("find_movies", {}, idempotency_key=""), "invalid_request")
    items = result_to_items(backend.call("cancel_tickets", {}))
    assert items[0].key == "error" and items[0].values[0] == "unknown_api"
    assert format_result(backend.call("find_movies", {"foo": "x"})).startswith(
        "<PR>find_movies<PRAN>error<PRAV>unknown_argument<PRAV>")


def test_find_movies_filters(backend):
    everything = _ok(backend.call("find_movies", {}))["name.movie"]
    assert len(everything) == backend.max_results
    comedies = _ok(backend.call("find_movies", {"location": "nearby", "name.genre": "comedies"}))["name.movie"]
    genres = {m[0]: m[1] for m in BUILTIN_MOVIES}
    assert comedies and all("comedy" in genres[t] for t in comedies)
    at = _ok(backend.call("find_movies", {"name.theater": "AMC Mountain 16"}))["name.movie"]
    assert {"No Time To Die", "Mulan"} <= set(at)
    rated = _ok(backend.call("find_movies", {"rating.movie": "rated R", "location": "Spring Hills"}))["name.movie"]
    assert rated and all(dict((m[0], m[2]) for m in BUILTIN_MOVIES)[t] == "R" for t in rated)
    assert _ok(backend.call("find_movies", {"name.person": "Daniel Craig"}))["name.movie"] == ["Knives Out",
                                                                                             "No Time To Die"]
    assert _ok(backend.call("find_movies", {"name.character": "harley quinn"}))["name.movie"] == ["Birds of Prey"]
    assert _ok(backend.call("find_movies", {"name.genre": "opera"})) == {"empty": [EMPTY]}
    _err(backend.call("find_movies", {"location": "Atlantis"}), "not_found", "location")
    _err(backend.call("find_movies", {"type.screening": "hologram"}), "invalid_argument", "type.screening")
    _err(backend.call("find_movies", {"rating.movies": "great"}), "invalid_argument")


def test_find_theaters_and_showtimes(backend):
    found = _ok(backend.call("find_theaters", SUCCESS_CALLS["find_theaters"]))["name.theater"]
    spring_hills = {t["name"] for t in backend.theaters.values() if t["location_id"] == backend.home_location_id}
    assert "AMC Mountain 16" in found and set(found) <= spring_hills
    near = _ok(backend.call("find_theaters", {"location": "near me"}))["name.theater"]
    assert near == ["AMC Mountain 16", "Cinemark Downtown", "Marcus Majestic"]  # home: Spring Hills, Kansas
    assert _ok(backend.call("find_theaters", {"location": "Santa Barbara, CA"}))["name.theater"] == [
        "AMC Boston Common 19", "AMC Mercado 24"]
    assert _ok(backend.call("find_showtimes", NTTD)) == {"time.showing": ["4:30pm", "7:10pm", "9:45pm"]}
    later = backend.call("find_showtimes", {**NTTD, "time.preference": "after 7pm", "date.showing": "Saturday"})
    assert _ok(later) == {"time.showing": ["7:10pm", "9:45pm"]} and later["meta"]["date"] == "2020-03-14"
    assert _ok(backend.call("find_showtimes", {**NTTD, "date.showing": "April 30"})) == {"empty": [EMPTY]}
    _err(backend.call("find_showtimes", {**NTTD, "date.showing": "someday"}), "invalid_argument", "date.showing")
    _err(backend.call("find_showtimes", {**NTTD, "time.preference": "whenever the moon"}), "invalid_argument")
    err = _err(backend.call("find_showtimes", {**NTTD, "name.theater": "AMC"}), "ambiguous", "name.theater")
    assert "AMC Mountain 16" in err["candidates"]


def test_attributes_and_resolvers(backend):
    attr = backend.call("get_movie_attribute", {"name.movie": "no time to die", "attribute": "rating.movie"})
    assert _ok(attr) == {"rating.movie": ["PG-13"]} and attr["meta"]["name.movie"] == "No Time To Die"
    assert _ok(backend.call("get_movie_attribute", {"name.movie": "1917", "attribute": "name.character"})) == {
        "name.character": [EMPTY]}
    dur = _ok(backend.call("get_movie_attribute", {"name.movie": "Emma", "attribute": "duration.movie"}))
    assert dur["duration.movie"][0].endswith(" minutes")
    _err(backend.call("get_movie_attribute", {"name.movie": "Emma", "attribute": "price"}), "invalid_argument",
         "attribute")
    _err(backend.call("get_movie_attribute", {"name.movie": "Zzyzx Road", "attribute": "name.genre"}), "not_found")
    assert _ok(backend.call("resolve_movie", {"name.movie": "the new James Bond movie"})) == {
        "name.movie": ["No Time To Die"]}
    assert _ok(backend.call("resolve_movie", {"name.movie": "Bad Boys 4 Life"})) == {"name.movie": [
        "Bad Boys for Life"]}
    assert _ok(backend.call("resolve_movie", {"name.movie": "qwerty uiop"})) == {"name.movie": [EMPTY]}
    assert _ok(backend.call("resolve_location", {"location": "SF"})) == {"location": ["San Francisco, California"]}
    assert _ok(backend.call("resolve_location", {"location": "san fran"})) == {"location": [
        "San Francisco, California"]}
    assert _ok(backend.call("resolve_location", {"location": "_AUTOMATIC"})) == {"location": ["Spring Hills, Kansas"]}
    assert _ok(backend.call("resolve_theater", SUCCESS_CALLS["resolve_theater"])) == {
        "name.theater": ["AMC Holiday Theater"]}
    assert _ok(backend.call("resolve_theater", {"name.theater": "Mountain AMC 16", "location": "nearby"})) == {
        "name.theater": ["AMC Mountain 16"]}


def test_check_tickets(backend):
    ok = backend.call("check_tickets", {**NTTD, "time.showing": "7:10 p.m", "num.tickets": "me and my friend"})
    assert _ok(ok) == {"status": ["available"]}
    assert _ok(backend.call("check_tickets", {**NTTD, "time.showing": "8pm"})) == {"status": ["unavailable"]}
    assert ok["meta"]["seats_left"] >= 2
    _err(backend.call("check_tickets", {**NTTD, "time.showing": "teatime"}), "invalid_argument", "time.showing")
    _err(backend.call("check_tickets", {**NTTD, "time.showing": "7pm", "num.tickets": "lots"}), "invalid_argument",
         "num.tickets")
    _err(backend.call("check_tickets", {**NTTD, "time.showing": "7pm", "num.tickets": "0"}), "invalid_argument")


# ---------------------------------------------------------------------------------------- transactions


def test_booking_decrements_seats_and_defaults(tmp_path):
    with _tiny(tmp_path, 5) as b:
        r = b.call("book_tickets", {**NTTD, "time.showing": "7:10pm", "num.tickets": "three", "seating": "aisle"})
        assert _ok(r) == {"status": ["success"]}
        meta = r["meta"]
        assert meta["num.tickets"] == 3 and meta["seats_left"] == 2 and meta["date"] == "2020-03-13"
        assert meta["price.total"] == "$37.50" and not meta["replayed"]
        assert b.showtime(b.bookings()[0]["showtime_id"])["seats_left"] == 2
        check = b.call("check_tickets", {**NTTD, "time.showing": "7:10pm", "num.tickets": "3"})
        assert _ok(check) == {"status": ["unavailable"]} and check["meta"]["reason"] == "not_enough_seats"
        assert _ok(b.call("check_tickets", {**NTTD, "time.showing": "7:10pm", "num.tickets": "2"}))["status"] == [
            "available"]
        fail = b.call("book_tickets", {**NTTD, "time.showing": "7:10pm", "num.tickets": "3"})
        assert _ok(fail) == {"status": ["failure"]} and fail["meta"] == {"reason": "not_enough_seats",
                                                                        "seats_left": 2}
        assert _ok(b.call("book_tickets", {**NTTD, "time.showing": "7:10pm", "num.tickets": "2"}))["status"] == [
            "success"]
        sold = b.call("book_tickets", {**NTTD, "time.showing": "7:10pm"})
        assert sold["meta"]["reason"] == "sold_out"
        none = b.call("book_tickets", {**NTTD, "time.showing": "8:00pm"})
        assert _ok(none) == {"status": ["failure"]} and none["meta"]["reason"] == "no_such_showtime"
        assert [x["num_tickets"] for x in b.bookings()] == [3, 2]
        for vague in ("5 or 6", "1.5", "0", "21", "lots"):  # refused with one line the agent sees, nothing booked
            err = _err(b.call("book_tickets", {**NTTD, "time.showing": "4:30pm", "num.tickets": vague}),
                       "invalid_argument")
            assert "num.tickets" in err["message"] and "\n" not in err["message"]
        assert [x["num_tickets"] for x in b.bookings()] == [3, 2]
        con = sqlite3.connect(b.db_path)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        with pytest.raises(sqlite3.IntegrityError):  # the schema itself refuses negative seats
            con.execute("UPDATE showtimes SET seats_left = -1 WHERE id = 1")
        con.close()


def test_concurrent_bookings_never_oversell(tmp_path):
    seats, threads = 4, 24
    with _tiny(tmp_path, seats) as b:
        start = threading.Barrier(threads)
        results: list[dict] = []

        def book(i: int) -> None:
            start.wait()
            results.append(b.call("book_tickets", {**NTTD, "time.showing": "4:30pm", "num.tickets": str(1 + i % 2)},
                                  idempotency_key=f"k{i}"))

        workers = [threading.Thread(target=book, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert all(r["ok"] for r in results) and len(results) == threads
        won = [r["meta"]["num.tickets"] for r in results if r["response"]["status"] == ["success"]]
        booked = b.bookings()
        assert sum(won) == sum(x["num_tickets"] for x in booked) == seats  # 4 seats sold, not one more
        assert b.showtime(booked[0]["showtime_id"])["seats_left"] == 0
        assert len({x["showtime_id"] for x in booked}) == 1


def test_idempotent_retries_book_once(tmp_path):
    with _tiny(tmp_path, 10) as b:
        args = {**NTTD, "time.showing": "9:45pm", "num.tickets": "2"}
        first = b.call("book_tickets", args, idempotency_key="req-1")
        again = b.call("book_tickets", {**args, "name.movie": "no time to die"}, idempotency_key="req-1")
        assert again["response"] == first["response"] == {"status": ["success"]}
        assert again["meta"]["replayed"] and again["meta"]["booking_id"] == first["meta"]["booking_id"]
        assert len(b.bookings()) == 1 and b.showtime(b.bookings()[0]["showtime_id"])["seats_left"] == 8
        err = _err(b.call("book_tickets", {**args, "num.tickets": "3"}, idempotency_key="req-1"),
                   "idempotency_conflict")
        assert err["booking_id"] == first["meta"]["booking_id"]

        start = threading.Barrier(8)
        out: list[dict] = []

        def retry() -> None:
            start.wait()
            out.append(b.call("book_tickets", {**args, "time.showing": "4:30pm"}, idempotency_key="req-2"))

        workers = [threading.Thread(target=retry) for _ in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert all(r["response"] == {"status": ["success"]} for r in out)
        assert sum(not r["meta"]["replayed"] for r in out) == 1 and len({r["meta"]["booking_id"] for r in out}) == 1
        assert [x["idempotency_key"] for x in b.bookings()] == ["req-1", "req-2"]


def test_database_persists_and_guards_its_catalogue(tmp_path):
    with _tiny(tmp_path, 3) as b:
        b.call("book_tickets", {**NTTD, "time.showing": "7:10pm"}, idempotency_key="p")
        path = b.db_path
    with BookingBackend(path, ontology=ONT) as again:  # reopened as is
        assert [x["idempotency_key"] for x in again.bookings()] == ["p"]
    with pytest.raises(CtxlabError, match="holds catalogue"):
        BookingBackend(path, catalogue=build_catalogue(seed=1), ontology=ONT)
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(CtxlabError, match="not a usable SQLite database"):
        BookingBackend(tmp_path / "junk.db", ontology=ONT)


def test_temporary_database_is_removed():
    b = BookingBackend(catalogue=build_catalogue(), ontology=ONT)
    path = b.db_path
    assert path.exists()
    b.close()
    assert not path.parent.exists()


def test_defaults_without_shared_data(monkeypatch, tmp_path):
    from ctxlab.apps.tickets import catalogue, ontology

    monkeypatch.setattr(ontology, "tm3_dir", lambda: None)
    monkeypatch.setattr(catalogue, "shipped_train_tsv", lambda: None)
    with BookingBackend() as b:  # built-in ontology and catalogue
        assert b.ontology.source == "builtin" and b.fingerprint == build_catalogue().fingerprint()
        assert _ok(b.call("resolve_movie", {"name.movie": "Family Jewels"})) == {"name.movie": ["Family Jewels"]}
    monkeypatch.undo()
    api_dir = tmp_path / "taskmaster3" / "TM-3-2020" / "ontology"
    api_dir.mkdir(parents=True)
    (api_dir / "apis.json").write_text(json.dumps({"resolve_movie": BUILTIN_APIS["resolve_movie"]}))
    monkeypatch.setenv("CTXLAB_SHARED_DATA", str(tmp_path))
    assert ontology.load_ontology().names() == ["resolve_movie"]


# ------------------------------------------------------------------------------------------- catalogue


def _fingerprint_in_subprocess(tsv: str | None, hashseed: str) -> str:
    code = ("import sys; from ctxlab.apps.tickets.catalogue import build_catalogue; "
            "print(build_catalogue(sys.argv[1] or None).fingerprint())")
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", code, tsv or ""], capture_output=True, text=True, env=env,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    return out.stdout.strip()


def test_builtin_catalogue_is_deterministic():
    a, b = build_catalogue(), build_catalogue()
    assert a == b and a.fingerprint() == b.fingerprint() and a.source == "builtin"
    assert build_catalogue(seed=1).fingerprint() != a.fingerprint()
    assert _fingerprint_in_subprocess(None, "123") == a.fingerprint()
    assert {m.title for m in a.movies} >= {"No Time To Die", "Mulan", "Family Jewels", "Beyond the Storm"}
    ids = [s.id for s in a.showtimes]
    assert ids == list(range(1, len(ids) + 1))
    assert len({(s.theater_id, s.movie_id, s.day, s.minutes) for s in a.showtimes}) == len(ids)
    screenings = {t.id: t.screenings for t in a.theaters}
    assert all(s.screening in screenings[s.theater_id] for s in a.showtimes)


def test_catalogue_from_the_shipped_shard(shared_data, tmp_path):
    tsv = shared_data / "taskmaster3" / "TM-3-2020" / "splits" / "train" / "train-bc.tsv"
    if not tsv.is_file():
        pytest.skip("train-bc.tsv not in the shared data")
    cat = build_catalogue(tsv)
    assert cat.source == "train-bc.tsv"
    assert _fingerprint_in_subprocess(str(tsv), "7") == cat.fingerprint()  # same inputs, same catalogue
    titles, theaters = {m.title for m in cat.movies}, {t.name for t in cat.theaters}
    assert {"No Time To Die", "Not My Problem", "Family Jewels", "Backcountry", "1917"} <= titles
    assert "Back Country" not in titles and "Bad Boys For Life" not in titles  # merged spellings
    assert {"AMC Mountain 16", "AMC Mercado 24", "AMC Holiday Theater", "Cinemark Downtown"} <= theaters
    assert "Mountain AMC 16" not in theaters
    home = cat.locations[cat.home_location_id - 1]
    assert home.name == "Spring Hills, Kansas"
    storm = next(m for m in cat.movies if m.title == "Beyond the Storm")
    assert storm.genre.casefold() == "action" and "James Cameron" in storm.people  # majority of the data's answers
    # replaying the shard's own book_tickets calls mostly succeeds against the derived catalogue
    with BookingBackend(tmp_path / "data.db", catalogue=cat, ontology=ONT) as b:
        calls = {it for ex in read_tsv(tsv) for it in (*(ex.history or ()), ex.target.call)
                 if isinstance(it, ApiCall) and it.name == "book_tickets"}
        statuses = [r["response"]["status"][0] for r in (b.call(c.name, c.arg_dict()) for c in calls) if r["ok"]]
        assert len(calls) > 100 and statuses.count("success") >= 0.5 * len(calls)


# ---------------------------------------------------------------------------------------------- values


@pytest.mark.parametrize("text, minutes", [
    ("7:10pm", 19 * 60 + 10), ("7:10 p.m", 19 * 60 + 10), ("7PM", 19 * 60), ("19:30", 19 * 60 + 30),
    ("7:20", 19 * 60 + 20), ("seven", 19 * 60), ("11:00am", 11 * 60), ("12:30pm", 12 * 60 + 30), ("noon", 720),
    ("12am", 0), ("25:00", None), ("7:75pm", None), ("soon", None), ("13pm", None),
])
def test_parse_time(text, minutes):
    assert V.parse_time(text) == minutes
    if minutes is not None and text[0].isdigit() and "m" in text.lower():
        assert V.parse_time(V.format_time(minutes)) == minutes


def test_dates_tickets_preferences_locations():
    today = date(2020, 3, 13)  # Friday
    cases = {"today": 13, "Tonight!": 13, "tomorrow": 14, "this Saturday": 14, "Friday": 13, "Thursday": 19,
             "March 20th": 20, "3/17": 17, "2020-03-18": 18, "the 16th of March": 16, "tomorrow, (March 14)": 14}
    for text, day in cases.items():
        assert V.parse_date(text, today) == date(2020, 3, day), text
    assert V.parse_date("someday", today) is None and V.parse_date("February 30", today) is None
    tickets = {"two": 2, "3": 3, "four adults": 4, "a couple": 2, "me and my friend": 2, "John, Sue and I": 3,
               "just me": 1, "3 tickets please": 3, "twenty": 20, "21": 21}
    assert {t: V.parse_tickets(t) for t in tickets} == tickets
    assert V.parse_tickets("lots") is None
    for vague in ("5 or 6", "1.5", "2 adults and 1 child", "3-4", "maybe 3", "1,000", "two or three", "1/2"):
        with pytest.raises(ValueError, match="number of tickets"):  # one whole number, never a sum or a guess
            V.parse_tickets(vague)
    prefs = {"any": None, "after 5pm": (1020, 1439), "before 8": (0, 1200), "between 6 and 8pm": (1080, 1200),
             "around 2pm": (780, 900), "evening": (1020, 1439), "latest showing": (1200, 1439),
             "Maybe around 6 or 7": (1020, 1200)}
    assert {p: V.parse_time_preference(p) for p in prefs} == prefs
    with pytest.raises(ValueError, match="not understood"):
        V.parse_time_preference("when the stars align")
    assert V.parse_screenings("IMAX or 3d") == {"IMAX", "3D"} and V.parse_screenings("hologram") is None
    assert V.parse_rating("rated pg-13") == "PG-13" and V.parse_rating("R") == "R" and V.parse_rating("good") is None
    assert split_location("Spring Hills Kansas") == ("Spring Hills", "Kansas")
    assert split_location("Petaluma, CA") == ("Petaluma", "California")
    assert split_location("methuen ma") == ("methuen ma", "")  # lowercase two letters without a comma: no state

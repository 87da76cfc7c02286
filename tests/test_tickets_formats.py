"""TicketTalk formats: split TSV, dialogue JSON, reward JSON and the API ontology."""

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest

from ctxlab.apps.tickets.ontology import BUILTIN_APIS, load_ontology, parse_ontology
from ctxlab.errors import CtxlabError
from ctxlab.tasks.tickettalk.formats import (
    ApiCall,
    ApiResponse,
    Example,
    Start,
    Target,
    Utterance,
    dialogue_items,
    dialogue_to_examples,
    format_dialogues,
    format_input,
    format_reward,
    format_target,
    format_tsv,
    iter_tsv,
    parse_dialogues,
    parse_input,
    parse_items,
    parse_reward,
    parse_target,
    parse_tsv,
    read_dialogues,
    read_reward,
    read_tsv,
    write_tsv,
)

FIX = Path(__file__).parent / "fixtures" / "tickettalk"
TM3 = ("taskmaster3", "TM-3-2020")


def _shard(shared_data: Path) -> Path:
    p = shared_data.joinpath(*TM3, "splits", "train", "train-bc.tsv")
    if not p.is_file():
        pytest.skip("train-bc.tsv not in the shared data")
    return p


# ------------------------------------------------------------------------------------------------ split TSV


def test_fixture_rows_parse_into_typed_items():
    rows = read_tsv(FIX / "split.tsv")
    assert len(rows) == 9
    first, second, third, fourth = rows[:4]
    assert first.head == Start() and first.history is None
    assert first.target == Target("Hello, how can I help you today?")
    assert second.head == Utterance("user", "Hi, I want to see a movie tonight.")
    assert second.history == (Start(), Utterance("agent", "Hello, how can I help you today?"))
    assert third.target == Target(None, ApiCall("find_movies", (("location", "Santa Barbara, California"),)))
    assert fourth.head == ApiResponse("find_movies", "name.movie", ("No Time To Die", "Mulan", "Emma"))
    assert fourth.history[-1] == ApiCall.of("find_movies", {"location": "Santa Barbara, California"})
    quoted = rows[4]
    assert quoted.head == Utterance("user", 'Is "Emma" a comedy?') and quoted.history is None
    assert quoted.target.text == "Let me check." and quoted.target.call.arg_dict() == {
        "name.movie": "Emma", "attribute": "name.genre"}
    assert rows[6].target == Target(None, ApiCall("find_theaters"))  # a call without arguments
    assert rows[7].target.call.arg_dict()["num.tickets"] == "two"
    assert {r.conversation_id for r in rows} == {f"dlg-00000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3, 4)}


def test_fixture_round_trips_byte_for_byte(tmp_path):
    raw = (FIX / "split.tsv").read_bytes()
    rows = read_tsv(FIX / "split.tsv")
    assert format_tsv(rows).encode("utf-8") == raw  # CRLF + CSV minimal quoting as upstream
    write_tsv(tmp_path / "out.tsv", rows)
    assert (tmp_path / "out.tsv").read_bytes() == raw
    assert read_tsv(tmp_path / "out.tsv") == rows
    assert parse_tsv(raw.decode("utf-8")) == rows


def test_quoting_only_where_needed():
    ex = Example("dlg-x", Utterance("user", 'say "hi"'), None, Target("ok"))
    plain = Example("dlg-y", Utterance("user", "hi"), None, Target("ok"))
    assert format_tsv([ex, plain]) == '"<U>say ""hi"""\t[A]ok\tdlg-x\r\n<U>hi\t[A]ok\tdlg-y\r\n'
    assert parse_tsv("<U>hi\t[A]ok\tdlg-y\n") == [plain]  # LF-only files read too


def test_item_grammar_round_trip():
    text = ("<S><A>Hi<U><PN>find_movies<PN>x<PAN>a<PAV><PR>resolve_movie<PRAN>name.movie<PRAV>A<PRAV>"
            "<A>trailing space ")
    items = parse_items(text)
    assert items[2] == Utterance("user", "") and items[4] == ApiCall("x", (("a", ""),))
    assert items[5] == ApiResponse("resolve_movie", "name.movie", ("A", ""))
    assert items[-1].text == "trailing space "
    head, history = parse_input("<U>now<C>" + text)
    assert format_input(head, history) == "<U>now<C>" + text
    for t in ("[A]", "[PN]a", "[A]x[PN]b[PAN]k[PAV]v[PAN]k2[PAV]"):
        assert format_target(parse_target(t)) == t


@pytest.mark.parametrize("line, message", [
    ("<U>a\t[A]b", "expected 3 tab-separated columns"),
    ("<U>a\t[A]b\tdlg\textra", "got 4"),
    ("hello<U>a\t[A]b\tdlg", "text before the first tag"),
    ("<A>a\t[A]b\tdlg", "the head must be"),
    ("<U>a<U>b\t[A]b\tdlg", "the head must be"),
    ("<PN>find_movies\t[A]b\tdlg", "the head must be"),
    ("<U>a<C><U>b<C><A>c\t[A]b\tdlg", "more than one <C>"),
    ("<U>a<C><PN>find_movies<PAN>location\t[A]b\tdlg", "not followed by <PAV>"),
    ("<PR>find_movies<PRAV>x\t[A]b\tdlg", "not followed by <PRAN>"),
    ("<PR>find_movies<PRAN>name.movie\t[A]b\tdlg", "has no <PRAV>"),
    ("<S>oops\t[A]b\tdlg", "<S> must not carry text"),
    ("<U>a<C><PAV>x\t[A]b\tdlg", "unexpected <PAV>"),
    ("<U>a\tjust text\tdlg", "text before the first tag"),
    ("<U>a\t\tdlg", "empty target"),
    ("<U>a\t[PN]x[A]b\tdlg", "malformed arguments"),
    ("<U>a\t[A]b[A]c\tdlg", "expected [PN]api"),
    ("<U>a\t[PN]x[PAN]k\tdlg", "malformed arguments"),
    ("<U>a\t[A]b\t ", "empty conversation_id"),
    ('<U>a\t"[A]b"c\tdlg', "bad CSV quoting"),
])
def test_malformed_rows_name_file_and_line(line, message):
    text = "<U>ok\t[A]fine\tdlg-1\r\n<U>ok\t[A]fine\tdlg-1\r\n" + line + "\r\n"
    with pytest.raises(CtxlabError) as e:
        parse_tsv(text, name="shard.tsv")
    assert "shard.tsv:3:" in str(e.value) and message in str(e.value)


def test_non_utf8_file_names_the_line(tmp_path):
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"<U>ok\t[A]fine\tdlg-1\r\n<U>caf\xe9\t[A]b\tdlg-2\r\n")
    with pytest.raises(CtxlabError, match=r"latin1.tsv:2: not UTF-8"):
        read_tsv(bad)


def test_writer_refuses_ambiguous_text():
    with pytest.raises(CtxlabError, match="reserved tag"):
        format_input(Utterance("user", "look: <A> here"), None)
    with pytest.raises(CtxlabError, match="reserved tag"):
        format_target(Target("see [PN] there"))
    with pytest.raises(CtxlabError):
        Target()
    with pytest.raises(CtxlabError):
        Utterance("robot", "x")


def test_real_shard_round_trip_and_documented_counts(shared_data):
    path = _shard(shared_data)
    raw = path.read_bytes()
    pairs = list(iter_tsv(path))
    rows = [ex for _, ex in pairs]
    assert [n for n, _ in pairs] == list(range(1, 1518))
    assert format_tsv(rows).encode("utf-8") == raw  # byte-identical, CRLF and the 109 quoted rows included
    fields = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), delimiter="\t"))
    assert sum('"' in "".join(f) for f in fields) == 109
    assert [(ex.input, ex.target_text, ex.conversation_id) for ex in rows] == [tuple(f) for f in fields]
    # Counts stated in data.md §2.4
    assert len({ex.conversation_id for ex in rows}) == 1462
    assert sum(ex.history is not None for ex in rows) == 1423
    combos = Counter((type(ex.head).__name__, "A" if ex.target.text is not None else "PN") for ex in rows)
    assert combos == {("Utterance", "A"): 597, ("Utterance", "PN"): 379, ("ApiResponse", "A"): 369,
                      ("ApiResponse", "PN"): 170, ("Start", "A"): 2}
    assert sum(ex.target.text is not None and ex.target.call is not None for ex in rows) == 13
    items = [it for ex in rows for it in (*(ex.history or ()), ex.head)]
    assert sum(isinstance(it, ApiCall) for it in items) == 5003
    assert sum(isinstance(it, ApiResponse) for it in items) == 5003
    assert sum(len(it.args) for it in items if isinstance(it, ApiCall)) == 11531
    assert sum(len(it.values) for it in items if isinstance(it, ApiResponse)) == 7539
    assert sum(it == Start() for it in items) == 36


# -------------------------------------------------------------------------------------------- dialogue JSON


def test_dialogue_json_round_trip(tmp_path):
    dialogues = read_dialogues(FIX / "dialogues.json")
    assert len(dialogues) == 2
    d = dialogues[0]
    assert d.scenario == "Auto template" and d.turns[0].speaker == "assistant"
    api = d.turns[2].apis[0]
    assert api.name == "find_theaters" and api.index == 2 and api.arg_dict() == {"name.movie": "Mulan",
                                                                                 "location": "nearby"}
    assert api.response == (ApiResponse("find_theaters", "name.theater", ("AMC Mountain 16", "Cinemark Downtown")),)
    for turn in d.turns:
        for seg in turn.segments:
            assert turn.text[seg.start_index:seg.end_index] == seg.text
    assert d.turns[1].segments[0].annotations == ("name.movie",)
    scalar = dialogues[1].turns[1].apis[0].response[0]
    assert scalar.values == ("success",) and scalar.scalar
    text = format_dialogues(dialogues)
    assert parse_dialogues(text) == dialogues
    assert json.loads(text)[1]["utterances"][1]["apis"][0]["response"] == {"status": "success"}
    assert json.loads(text)[0]["utterances"][0].keys() == {"index", "speaker", "text"}


def test_dialogue_to_examples_follows_the_split_grammar():
    d1, d2 = read_dialogues(FIX / "dialogues.json")
    assert dialogue_items(d2)[:2] == [Utterance("user", d2.turns[0].text), ApiCall(
        "book_tickets", d2.turns[1].apis[0].args)]  # an empty assistant text adds no <A>
    rows = dialogue_to_examples(d1)
    assert [r.input for r in rows] == [
        "<S>",
        "<U>Is Mulan playing near me?<C><S><A>Hello, how can I help you today?",
        "<PR>find_theaters<PRAN>name.theater<PRAV>AMC Mountain 16<PRAV>Cinemark Downtown<C><S><A>Hello, how can I "
        "help you today?<U>Is Mulan playing near me?<A>Let me look that up.<PN>find_theaters<PAN>name.movie<PAV>"
        "Mulan<PAN>location<PAV>nearby",
        "<U>Thanks!<C><S><A>Hello, how can I help you today?<U>Is Mulan playing near me?<A>Let me look that up."
        "<PN>find_theaters<PAN>name.movie<PAV>Mulan<PAN>location<PAV>nearby<PR>find_theaters<PRAN>name.theater"
        "<PRAV>AMC Mountain 16<PRAV>Cinemark Downtown<A>Mulan is playing at AMC Mountain 16 and Cinemark Downtown.",
    ]
    assert [r.target_text for r in rows] == [
        "[A]Hello, how can I help you today?",
        "[A]Let me look that up.[PN]find_theaters[PAN]name.movie[PAV]Mulan[PAN]location[PAV]nearby",
        "[A]Mulan is playing at AMC Mountain 16 and Cinemark Downtown.", "[A]Enjoy the movie."]
    rows2 = dialogue_to_examples(d2)
    assert [r.target_text for r in rows2] == [
        "[PN]book_tickets[PAN]name.movie[PAV]Emma[PAN]name.theater[PAV]Boulevard 14 Cinema[PAN]time.showing"
        "[PAV]4:30pm[PAN]num.tickets[PAV]one", "[A]Done! Your ticket is booked."]
    assert rows2[0].history is None
    assert parse_tsv(format_tsv(rows + rows2)) == rows + rows2


@pytest.mark.parametrize("obj, message", [
    ({"utterances": []}, "missing field 'conversation_id'"),
    ({"conversation_id": "d", "utterances": [{"index": 0, "speaker": "bot", "text": "x"}]}, "speaker must be"),
    ({"conversation_id": "d", "utterances": [{"index": "0", "speaker": "user", "text": "x"}]}, "'index' has type"),
    ({"conversation_id": "d", "utterances": [{"index": 0, "speaker": "user", "text": "x",
                                              "apis": [{"name": "f", "args": {"a": 1}}]}]}, "must be a string"),
    ({"conversation_id": "d", "utterances": [{"index": 0, "speaker": "user", "text": "x",
                                              "apis": [{"name": "f", "response": {"k": {"x": 1}}}]}]},
     "string or a list of strings"),
])
def test_malformed_dialogues(obj, message):
    with pytest.raises(CtxlabError) as e:
        parse_dialogues(json.dumps([obj]), name="data_00.json")
    assert "data_00.json" in str(e.value) and message in str(e.value)


def test_invalid_json_reports_the_line():
    with pytest.raises(CtxlabError, match=r"data_00.json:3: invalid JSON"):
        parse_dialogues('[\n{"conversation_id": "d",\n "utterances": [}\n]', name="data_00.json")
    with pytest.raises(CtxlabError, match="expected a JSON array"):
        parse_dialogues("{}")


# ---------------------------------------------------------------------------------------------- reward JSON


def test_reward_fixture_round_trip():
    raw = (FIX / "reward.json").read_text(encoding="utf-8")
    examples = read_reward(FIX / "reward.json")
    assert [ex.reward for ex in examples] == [1.0, 0.0, 1.0]
    assert examples[0].context[1] == Utterance("user", "What\u2019s playing in SF?")
    assert examples[0].generation == ApiCall("resolve_location", (("location", "SF"),))
    resp = examples[2].context[3]
    assert resp == ApiResponse("resolve_location", "location", ("San Francisco, California",), scalar=False)
    assert examples[2].context[5].scalar  # a bare-string response value stays a string
    assert format_reward(examples) == raw
    with pytest.raises(CtxlabError, match="exactly one API"):
        parse_reward(json.dumps([{"conversation_id": "x", "context": "[]", "reward": 1.0, "generation": json.dumps(
            {"role": "agent", "api": {"a": {}, "b": {}}})}]))


def test_real_reward_files_round_trip(shared_data):
    files = sorted(shared_data.joinpath(*TM3, "reward").glob("reward_0*.json"))
    if not files:
        pytest.skip("reward files not in the shared data")
    for f in files[:2]:
        examples = read_reward(f)
        assert len(examples) == 500
        assert format_reward(examples).encode("utf-8") == f.read_bytes()


# ------------------------------------------------------------------------------------------------ ontology


def test_builtin_ontology_matches_the_shipped_file(shared_data):
    shipped = shared_data.joinpath(*TM3, "ontology", "apis.json")
    if not shipped.is_file():
        pytest.skip("apis.json not in the shared data")
    assert json.loads(shipped.read_text()) == BUILTIN_APIS
    assert load_ontology().apis == parse_ontology(BUILTIN_APIS).apis


def test_ontology_contents_and_errors(tmp_path):
    ont = parse_ontology(BUILTIN_APIS, "builtin")
    assert len(ont.names()) == 9
    book = ont.spec("book_tickets")
    assert book.required == ("name.movie", "name.theater", "time.showing") and book.response_type == "boolean"
    assert "rating.movie" in ont.spec("find_movies").allowed_args()  # the data's spelling of rating.movies
    with pytest.raises(CtxlabError, match="unknown API"):
        ont.spec("cancel_tickets")
    bad = tmp_path / "apis.json"
    bad.write_text('{"x": {"args": {}, "response": {"type": "dict"}}}')
    with pytest.raises(CtxlabError, match="response type 'dict'"):
        load_ontology(bad)
    with pytest.raises(CtxlabError, match="not found"):
        load_ontology(tmp_path / "missing.json")

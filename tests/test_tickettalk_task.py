"""The tickettalk next-action task and its metrics (BLEU over replies, API exact match, argument F1)."""

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import sacrebleu

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import CARD_SECTIONS
from ctxlab.tasks.tickettalk import TASKS, TicketTalkTask
from ctxlab.tasks.tickettalk import metrics as M
from ctxlab.tasks.tickettalk.formats import ApiCall, read_tsv

FIX = Path(__file__).parent / "fixtures" / "tickettalk"
TASK: TicketTalkTask = TASKS[0]
TM3_STYLE = dataclasses.replace(TASK, prompt_style="tm3")


def test_task_definition_and_card():
    assert [t.name for t in TASKS] == ["tickettalk"]
    assert TASK.version == "1.0" and TASK.needs_data_dir and TASK.languages == ("en",)
    assert TASK.metrics == ("bleu", "api_exact_match", "api_arg_f1")
    sections = TASK.card.sections()
    assert list(sections) == list(CARD_SECTIONS)
    assert all(sections[name] for name in CARD_SECTIONS)  # all six GEM sections filled
    assert "CC BY 4.0" in sections["overview"]["languages.license"]
    assert set(TASK.metrics) == set(M.METRIC_SPECS)


def test_samples_from_a_tsv_file():
    samples = list(TASK.samples(FIX / "split.tsv"))
    assert len(samples) == 9 and samples[0].id == "split.tsv:1" and samples[8].id == "split.tsv:9"
    s = samples[3]
    assert s.question == "<PR>find_movies<PRAN>name.movie<PRAV>No Time To Die<PRAV>Mulan<PRAV>Emma"
    assert s.context.startswith("<S><A>Hello") and s.context.endswith("<PAV>Santa Barbara, California")
    assert s.reference == {"target": "[A]I found three movies: No Time To Die, Mulan and Emma.",
                           "text": "I found three movies: No Time To Die, Mulan and Emma.", "call": None}
    assert s.meta == {"conversation_id": "dlg-00000000-0000-4000-8000-000000000001", "has_context": True,
                      "head": "ApiResponse", "target_kind": "text"}
    call_ref = samples[2].reference
    assert call_ref["call"] == "<PN>find_movies<PAN>location<PAV>Santa Barbara, California" and call_ref["text"] is None
    both = samples[4]
    assert both.meta["target_kind"] == "text+call" and both.context == "" and both.question == '<U>Is "Emma" a comedy?'
    json.dumps([dataclasses.asdict(x) for x in samples])  # samples are JSON-serialisable


def test_prompt_styles():
    rows = read_tsv(FIX / "split.tsv")
    samples = list(TASK.samples(FIX / "split.tsv"))
    assert [TM3_STYLE.prompt(s) for s in samples] == [r.input for r in rows]  # upstream text-to-text input
    assert TASK.prompt(samples[1]) == ("<S><A>Hello, how can I help you today?"
                                       "<U>Hi, I want to see a movie tonight.")  # history, then the head
    with pytest.raises(CtxlabError, match="prompt_style"):
        list(dataclasses.replace(TASK, prompt_style="chat").samples(FIX / "split.tsv"))


def test_directory_of_shards_and_gem_records(tmp_path):
    lines = (FIX / "split.tsv").read_bytes().split(b"\r\n")[:-1]
    (tmp_path / "dev-ab.tsv").write_bytes(b"\r\n".join(lines[5:]) + b"\r\n")
    (tmp_path / "dev-aa.tsv").write_bytes(b"\r\n".join(lines[:5]) + b"\r\n")
    (tmp_path / "notes.txt").write_text("ignored")
    ids = [s.id for s in TASK.samples(tmp_path)]
    assert ids == [f"dev-aa.tsv:{i}" for i in range(1, 6)] + [f"dev-ab.tsv:{i}" for i in range(1, 5)]
    gem = list(TASK.samples(FIX / "gem.jsonl"))
    assert [s.id for s in gem] == ["GEM-Taskmaster-test-0", "GEM-Taskmaster-test-1"]
    assert gem[0].reference["text"] == "Hello, how can I help you today?" and gem[0].question == "<S>"
    assert gem[1].reference["call"] == "<PN>find_movies<PAN>location<PAV>Santa Barbara, California"
    gem_dir = tmp_path / "gem"
    gem_dir.mkdir()
    rows = [json.loads(line) for line in (FIX / "gem.jsonl").read_text().splitlines()]
    (gem_dir / "test.json").write_text(json.dumps(rows))
    assert [s.reference for s in TASK.samples(gem_dir)] == [s.reference for s in gem]


def test_bad_data_paths_and_rows(tmp_path):
    with pytest.raises(CtxlabError, match="needs a data dir"):
        list(TASK.samples(None))
    with pytest.raises(CtxlabError, match="not found"):
        list(TASK.samples(tmp_path / "missing"))
    with pytest.raises(CtxlabError, match=r"no \*\.tsv shards"):
        list(TASK.samples(tmp_path))
    bad = tmp_path / "bad.tsv"
    shutil.copy(FIX / "split.tsv", bad)
    with bad.open("ab") as f:
        f.write(b"<U>hi\t[A]fine\r\n")
    with pytest.raises(CtxlabError, match=r"bad.tsv:10: expected 3 tab-separated columns"):
        list(TASK.samples(bad))
    gem = tmp_path / "g.jsonl"
    gem.write_text('{"context": "<S>", "target": "hi"}\n\n{"context": "<A>x", "target": "hi"}\n')
    with pytest.raises(CtxlabError, match=r"g.jsonl:3: the head must be"):
        list(TASK.samples(gem))
    gem.write_text('{"context": "<S>"}\n')
    with pytest.raises(CtxlabError, match="needs string fields"):
        list(TASK.samples(gem))


# ------------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("generation, text, call", [
    ("[A]Sure, which city?", "Sure, which city?", None),
    ("<A>Sure.", "Sure.", None),
    ("  Sure, which city?\n", "Sure, which city?", None),
    ("[PN]find_movies[PAN]location[PAV]nearby", None, ApiCall("find_movies", (("location", "nearby"),))),
    ("<PN>find_movies<PAN>location<PAV>nearby<PR>find_movies<PRAN>name.movie<PRAV>Mulan<A>Mulan.",
     None, ApiCall("find_movies", (("location", "nearby"),))),  # a hallucinated continuation is cut
    ("Let me check.[PN]resolve_movie[PAN]name.movie[PAV]No Time", "Let me check.",
     ApiCall("resolve_movie", (("name.movie", "No Time"),))),
    ("[PN]find_theaters[PAN]location", None, ApiCall("find_theaters", (("location", ""),))),
    ("<U>I am the user now", None, None),
    ("", None, None),
])
def test_parse_generation(generation, text, call):
    parsed = TASK.parse(generation)
    action = M.parse_action(parsed)
    assert (action.text, action.call) == (text, call)
    assert M.parse_action(generation) == action


# ------------------------------------------------------------------------------------------------- metrics

REF_CALL = "[PN]book_tickets[PAN]name.movie[PAV]Mulan[PAN]name.theater[PAV]AMC Mountain 16[PAN]num.tickets[PAV]two"


def test_exact_match_and_argument_f1_hand_computed():
    same_reordered = ("<PN>book_tickets<PAN>num.tickets<PAV>Two<PAN>name.movie<PAV>mulan"
                      "<PAN>name.theater<PAV>AMC  Mountain 16")
    assert M.api_exact_match(same_reordered, REF_CALL) == (1.0, 1.0)  # order, case and spacing ignored
    assert M.api_exact_match(same_reordered, REF_CALL, strict=True) == (0.0, 1.0)
    one_wrong = "[PN]book_tickets[PAN]name.movie[PAV]Mulan[PAN]name.theater[PAV]AMC Mercado 24[PAN]num.tickets[PAV]two"
    assert M.api_exact_match(one_wrong, REF_CALL) == (0.0, 1.0)
    assert M.api_arg_counts(one_wrong, REF_CALL) == (2.0, 3.0, 3.0)  # F1 = 2/3
    extra = ("[PN]book_tickets[PAN]name.movie[PAV]Mulan[PAN]name.theater[PAV]AMC Mountain 16[PAN]num.tickets[PAV]two"
             "[PAN]seating[PAV]any")
    assert M.api_exact_match(extra, REF_CALL) == (0.0, 1.0) and M.api_arg_counts(extra, REF_CALL) == (3.0, 4.0, 3.0)
    wrong_api = REF_CALL.replace("book_tickets", "check_tickets")
    assert M.api_exact_match(wrong_api, REF_CALL) == (0.0, 1.0) and M.api_arg_counts(wrong_api, REF_CALL) == (
        0.0, 3.0, 3.0)
    assert M.api_arg_counts("[A]Sure.", REF_CALL) == (0.0, 0.0, 3.0)
    assert M.api_exact_match("[PN]find_theaters", "[PN]find_theaters") == (1.0, 1.0)  # no arguments
    assert M.api_exact_match(REF_CALL, "[A]Enjoy!") == (0.0, 0.0)  # not counted without a gold call
    assert M.api_arg_counts(REF_CALL, "[A]Enjoy!") == (0.0, 3.0, 0.0)  # but a spurious call costs precision
    rows = [M.sample_scores(p, REF_CALL) for p in (same_reordered, one_wrong, extra, wrong_api, "[A]Sure.")]
    scores = M.aggregate(rows)
    assert scores["api_exact_match"] == pytest.approx(20.0)  # 1 of 5
    # micro F1: tp = 3+2+3+0+0 = 8, predicted = 3+3+4+3+0 = 13, gold = 5*3 = 15 -> 2*8/28
    assert scores["api_arg_f1"] == pytest.approx(100 * 16 / 28)
    assert scores["bleu"] == 0.0  # no reply references at all


def test_bleu_hand_computed_and_equal_to_sacrebleu():
    # all n-gram precisions are 1, brevity penalty exp(1 - 5/4)
    stats = M.bleu_stats("[A]a b c d", "[A]a b c d e")
    assert stats == (4.0, 5.0, 4.0, 3.0, 2.0, 1.0, 4.0, 3.0, 2.0, 1.0)
    assert M.corpus_bleu([stats]) == pytest.approx(100 * math.exp(-0.25))
    assert M.bleu_stats("[PN]find_movies", "[PN]find_movies") == (0.0,) * 10  # no reply reference: neutral
    pairs = [("[A]The movie starts at 7:10pm tonight.", "[A]It starts at 7:10pm tonight."),
             ("I found three theaters near you.", "[A]There are three theaters near you."),
             ("[PN]find_movies", "[A]Which city are you in?"),  # no predicted reply: empty hypothesis
             ("[A]Enjoy the show!", "[A]Enjoy the show!")]
    values = [M.bleu_stats(p, r) for p, r in pairs] + [M.bleu_stats("[A]x", "[PN]find_movies")]
    hyps = ["The movie starts at 7:10pm tonight.", "I found three theaters near you.", "", "Enjoy the show!"]
    refs = ["It starts at 7:10pm tonight.", "There are three theaters near you.", "Which city are you in?",
            "Enjoy the show!"]
    expected = sacrebleu.corpus_bleu(hyps, [refs]).score
    assert M.corpus_bleu(values) == pytest.approx(expected) and 0 < expected < 100
    from ctxlab.tasks.metrics import get_metric  # the registry's corpus BLEU reads the same statistics

    assert get_metric("bleu").aggregate(values) == pytest.approx(expected)


def test_score_uses_the_sample_reference():
    samples = list(TASK.samples(FIX / "split.tsv"))
    perfect = [TASK.score(TASK.parse(s.reference["target"]), s) for s in samples]
    assert M.aggregate(perfect) == pytest.approx({"bleu": 100.0, "api_exact_match": 100.0, "api_arg_f1": 100.0})
    chatty = [TASK.score(TASK.parse("Sure, let me help."), s) for s in samples]
    result = M.aggregate(chatty)
    assert result["api_exact_match"] == 0.0 and result["api_arg_f1"] == 0.0 and 0 <= result["bleu"] < 10
    assert [v["api_exact_match"][1] for v in chatty] == [0, 0, 1, 0, 1, 0, 1, 1, 0]  # rows with a gold call
    assert M.exact_match_score([]) == 0.0 and M.arg_f1_score([(0, 0, 0)]) == 0.0
    with pytest.raises(ValueError, match="statistics per sample"):
        M.corpus_bleu([(1.0, 2.0)])


def test_real_shard_samples(shared_data):
    path = shared_data / "taskmaster3" / "TM-3-2020" / "splits" / "train" / "train-bc.tsv"
    if not path.is_file():
        pytest.skip("train-bc.tsv not in the shared data")
    samples = list(TASK.samples(path))
    assert len(samples) == 1517 and len({s.id for s in samples}) == 1517
    rows = read_tsv(path)
    assert all(TM3_STYLE.prompt(s) == r.input for s, r in zip(samples, rows, strict=True))
    kinds = [s.meta["target_kind"] for s in samples]
    assert kinds.count("call") == 549 and kinds.count("text") == 955 and kinds.count("text+call") == 13
    perfect = M.aggregate([TASK.score(TASK.parse(s.reference["target"]), s) for s in samples])
    assert perfect == pytest.approx({"bleu": 100.0, "api_exact_match": 100.0, "api_arg_f1": 100.0})

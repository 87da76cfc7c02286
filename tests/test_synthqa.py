import json
from pathlib import Path

import numpy as np
import pytest

from ctxlab.apps.synthqa.generator import (
    FILTERS,
    Context,
    check_parallel,
    find_answer_span,
    format_stats,
    generation_prompt,
    generation_target,
    load_contexts,
    parse_generation,
    run_synth_qa,
    save_synth_qa,
    split_article_indices,
    split_parallel,
)
from ctxlab.apps.synthqa.report import format_gain_table, gain_table, paired_bootstrap_ci, plot_gains
from ctxlab.errors import CtxlabError
from ctxlab.tasks.xquad import XQUAD_LANGS, load_squad, load_xquad, make_task, parse_squad

FIXTURES = Path(__file__).parent / "fixtures" / "xquad"


# ------------------------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("question: Who won? answer: Denver", ("Who won?", "Denver")),
        ("  Question:Who\n won?  ANSWER :  the Broncos </s><pad><pad>", ("Who won?", "the Broncos")),
        ("Question： 谁赢了？ Answer： 丹佛野马队<|endoftext|>", ("谁赢了？", "丹佛野马队")),
        ("question: Q1? answer: A1 question: Q2? answer: A2", ("Q1?", "A1")),
        ("question: Q? answer: 42\nquestion: more", ("Q?", "42")),
        ("noise first. question: Q? answer: A", ("Q?", "A")),
        ("answer: only an answer", None),
        ("question: no answer here", None),
        ("question: ??? answer: A", None),
        ("question: Q? answer: ...", None),
        ("", None),
    ],
)
def test_parse_generation(text, expected):
    assert parse_generation(text) == expected


def test_prompt_and_target_round_trip():
    assert generation_prompt("Ein Kontext.") == "context: Ein Kontext."
    assert parse_generation(generation_target("Wer?", "Bob")) == ("Wer?", "Bob")


# ------------------------------------------------------------------------------------------- spans


def _span(context, answer):
    sp = find_answer_span(context, answer)
    return None if sp is None else context[sp[0]:sp[1]]


@pytest.mark.parametrize(
    ("context", "answer", "expected"),
    [
        ("Der Genfersee liegt nahe Genève, in der Schweiz.", "GENÈVE", "Genève"),
        ("Der Genfersee liegt nahe Genève, in der Schweiz.", "Gene\u0300ve", "Genève"),  # NFD answer, NFC context
        ("Der Genfersee liegt nahe Genève, in der Schweiz.", "Gen", None),  # inside a word
        ("Der Genfersee liegt nahe Genève, in der Schweiz.", "Genève in der", "Genève, in der"),
        ("It was a party.", "art", None),
        ("The Art of War", "the art of war.", "The Art of War"),
        ("Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "αθήνα", "Αθήνα"),
        ("Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "Αθή", None),
        ("Столица России — «Москва», крупнейший город.", "«москва»", "Москва"),
        ("Столица России — «Москва», крупнейший город.", "Моск", None),
        ("عاصمة مصر هي القاهرة، أكبر مدينة.", "القاهرة", "القاهرة"),
        ("عاصمة مصر هي القاهرة، أكبر مدينة.", "قاهرة", None),
        ("भारत की राजधानी नई दिल्ली है।", "नई दिल्ली", "नई दिल्ली"),
        ("भारत की राजधानी नई दिल्ली है।", "दिल्", None),  # would cut before the consonant ल
        ("भारत की राजधानी नई दिल्ली है।", "दिल", None),  # would cut before the virama (a mark)
        ("यह \u095eिल्म अच्छी है", "\u092b\u093c\u093f\u0932\u094d\u092e", "\u095eिल्म"),  # nukta composed/decomposed
        ("日内瓦湖由瑞士和法国共享。", "瑞士", "瑞士"),  # no word boundaries in Chinese
        ("日内瓦湖由瑞士和法国共享。", "法国。", "法国"),
        ("该组织成立于１９９０年。", "1990", "１９９０"),  # NFKC: full-width digits
        ("日内瓦湖由瑞士和法国共享。", "德国", None),
        ("Some context.", "  ", None),
    ],
)
def test_find_answer_span(context, answer, expected):
    assert _span(context, answer) == expected


def test_span_offsets_prefer_boundary_occurrence():
    ctx = "Partition the art collection: art is long."
    assert find_answer_span(ctx, "art") == (14, 17)


# ------------------------------------------------------------------------------------------- pipeline


class FakeGenerator:
    """Returns scripted generations per prompt, in order; records the batch sizes it was called with."""

    def __init__(self, script: dict[str, list[str]]):
        self.script = {k: list(v) for k, v in script.items()}
        self.batches: list[int] = []

    def __call__(self, prompts: list[str]) -> list[str]:
        self.batches.append(len(prompts))
        return [self.script[p].pop(0) for p in prompts]


EN = Context("en-0", "The Danube flows through ten countries before reaching the Black Sea.", "en", "Danube")
DE = Context("de-0", "Die Donau fließt durch zehn Länder, bevor sie das Schwarze Meer erreicht.", "de", "Danube")
SCRIPT = {
    generation_prompt(EN.text): [
        "question: How many countries? answer: ten",  # kept
        "this is not the format",  # unparsable
        "question: Where does it end? answer: the Red Sea",  # not a span
        "question: how many countries ? answer: Ten.",  # duplicate after normalisation
        "question: Where does it end? answer: the Black Sea",  # QA model disagrees → round trip
    ],
    generation_prompt(DE.text): [
        "question: Wie viele Länder? answer: zehn Länder",  # QA "zehn": F1 2/3 → kept
        "question: Wodurch fließt sie? answer: Länder",  # QA "durch zehn Länder": F1 exactly 0.5 → kept at 0.5
        "question: Was erreicht sie? answer: das Schwarze Meer",  # QA agrees → kept
        "question: Wie viele Länder? answer: zehn Länder",  # exact duplicate
        "question: Wer? answer: Donau",  # QA answers nothing useful → round trip
    ],
}
QA_ANSWERS = {
    "How many countries?": "ten", "Where does it end?": "Vienna", "Wie viele Länder?": "zehn",
    "Wodurch fließt sie?": "durch zehn Länder", "Was erreicht sie?": "Schwarze Meer", "Wer?": "Wien",
}


def fake_answer(contexts: list[str], questions: list[str]) -> list[str]:
    assert len(contexts) == len(questions)
    return [QA_ANSWERS[q] for q in questions]


def test_pipeline_filters_and_stats():
    gen = FakeGenerator(SCRIPT)
    squad, stats = run_synth_qa(gen, fake_answer, [EN, DE], per_context=5, batch_size=4)
    assert gen.batches == [4, 4, 2]
    assert stats["en"] == {"contexts": 1, "generated": 5, "kept": 1,
                           "dropped": {"unparsable": 1, "not_span": 1, "duplicate": 1, "roundtrip": 1}}
    assert stats["de"] == {"contexts": 1, "generated": 5, "kept": 3,
                           "dropped": {"unparsable": 0, "not_span": 0, "duplicate": 1, "roundtrip": 1}}
    for s in stats.values():
        assert s["generated"] == s["kept"] + sum(s["dropped"][f] for f in FILTERS)
    arts = parse_squad(squad)  # validates schema and every answer_start
    assert [a.title for a in arts] == ["Danube", "Danube"]
    en_qas = arts[0].paragraphs[0].qas
    assert [(q.id, q.question, q.answers) for q in en_qas] == [("en-0-q0", "How many countries?", (("ten", 25),))]
    de_answers = [q.answers[0][0] for q in arts[1].paragraphs[0].qas]
    assert de_answers == ["zehn Länder", "Länder", "das Schwarze Meer"]
    text = format_stats(stats)
    assert text.splitlines()[0].split() == ["lang", "contexts", "generated", "kept", *FILTERS]
    assert text.splitlines()[-1].split() == ["all", "2", "10", "4", "1", "1", "2", "2"]


def test_roundtrip_threshold_and_no_qa_model():
    _, stats = run_synth_qa(FakeGenerator(SCRIPT), fake_answer, [DE], per_context=5, min_roundtrip_f1=0.6)
    assert stats["de"]["kept"] == 2 and stats["de"]["dropped"]["roundtrip"] == 2
    _, stats = run_synth_qa(FakeGenerator(SCRIPT), None, [EN, DE], per_context=5)
    assert stats["en"]["kept"] == 2 and stats["de"]["kept"] == 4
    assert stats["en"]["dropped"]["roundtrip"] == stats["de"]["dropped"]["roundtrip"] == 0


def test_dedup_scope_global():
    a = Context("a", "Ten countries lie on the river.", "en")
    b = Context("b", "The river crosses ten countries.", "en")
    gen = FakeGenerator({generation_prompt(c.text): ["question: How many? answer: ten"] for c in (a, b)})
    squad, stats = run_synth_qa(gen, None, [a, b], dedup_scope="global")
    assert stats["en"]["dropped"]["duplicate"] == 1
    assert squad["data"][0]["paragraphs"][0]["qas"][0]["answers"] == [{"text": "Ten", "answer_start": 0}]
    gen = FakeGenerator({generation_prompt(c.text): ["question: How many? answer: ten"] for c in (a, b)})
    _, stats = run_synth_qa(gen, None, [a, b])
    assert stats["en"]["kept"] == 2
    assert run_synth_qa(FakeGenerator({generation_prompt(a.text): ["junk"]}), None, [a])[0]["data"] == []


def test_pipeline_input_validation():
    gen = FakeGenerator(SCRIPT)
    with pytest.raises(CtxlabError, match="per_context"):
        run_synth_qa(gen, None, [EN], per_context=0)
    with pytest.raises(CtxlabError, match="duplicate context id"):
        run_synth_qa(gen, None, [EN, EN])
    with pytest.raises(CtxlabError, match="no contexts"):
        run_synth_qa(gen, None, [])
    with pytest.raises(CtxlabError, match="min_roundtrip_f1"):
        run_synth_qa(gen, None, [EN], min_roundtrip_f1=50)
    with pytest.raises(CtxlabError, match="generate returned 0 outputs for 1 inputs"):
        run_synth_qa(lambda prompts: [], None, [EN])
    with pytest.raises(CtxlabError, match="answer returned"):
        run_synth_qa(FakeGenerator(SCRIPT), lambda c, q: ["x"], [EN], per_context=5)


def test_output_round_trips_through_loader_and_task(tmp_path):
    squad, stats = run_synth_qa(FakeGenerator(SCRIPT), fake_answer, [EN, DE], per_context=5)
    out, side = save_synth_qa(squad, stats, tmp_path / "xquad.de.json")
    assert json.loads(side.read_text(encoding="utf-8")) == stats
    obj = json.loads(out.read_text(encoding="utf-8"))
    assert set(obj) == {"version", "data"} and obj["version"] == "1.1"
    for art in obj["data"]:
        assert set(art) == {"title", "paragraphs"}
        for par in art["paragraphs"]:
            assert set(par) == {"context", "qas"}
            for qa in par["qas"]:
                assert set(qa) == {"id", "question", "answers"}
                assert all(set(a) == {"text", "answer_start"} for a in qa["answers"])
    assert sum(len(p.qas) for a in load_squad(out) for p in a.paragraphs) == 4
    samples = list(make_task("de").samples(tmp_path))
    assert len(samples) == 4
    for s in samples:
        (start, end), = s.evidence
        assert s.context[start:end] == s.reference[0]


def test_oracle_generator_on_real_data(shared_data):
    contexts = load_contexts("xquad:zh", data_dir=shared_data)
    gold = {p.context: p.qas[0] for a in load_xquad("zh", shared_data) for p in a.paragraphs}
    questions = {" ".join(q.question.split()): q.answers[0][0] for q in gold.values()}  # the parser collapses spaces

    def generate(prompts):
        return [generation_target(gold[p[len("context: "):]].question, gold[p[len("context: "):]].answers[0][0])
                for p in prompts]

    squad, stats = run_synth_qa(generate, lambda c, q: [questions[x] for x in q], contexts, batch_size=64)
    assert stats["zh"]["generated"] == 240 and stats["zh"]["kept"] == 240
    assert len(parse_squad(squad)) == 48


# ------------------------------------------------------------------------------------------- contexts


def test_load_contexts_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("Erster Kontext.\n\n  Zweiter Kontext.  \n", encoding="utf-8")
    assert load_contexts(str(txt), lang="de") == [Context("c-1", "Erster Kontext.", "de"),
                                                  Context("c-3", "Zweiter Kontext.", "de")]
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"context": "A.", "lang": "en", "title": "T"}\n\n{"text": "Б.", "id": "x"}\n', encoding="utf-8")
    assert load_contexts(str(jl), lang="ru") == [Context("c-1", "A.", "en", "T"), Context("x", "Б.", "ru")]
    jl.write_text('{"context": "A."}\n{"title": "no context"}\n', encoding="utf-8")
    with pytest.raises(CtxlabError, match=r"c.jsonl:2: expected an object"):
        load_contexts(str(jl))
    jl.write_text('{"context": "A.", "lang": "e n"}\n', encoding="utf-8")
    with pytest.raises(CtxlabError, match=r"c.jsonl:1: invalid language"):
        load_contexts(str(jl))
    squad_ctx = load_contexts(str(FIXTURES / "xquad.en.json"), lang="en")
    assert len(squad_ctx) == 4 and squad_ctx[0].title == "Lake_Geneva" and squad_ctx[0].lang == "en"
    with pytest.raises(CtxlabError, match="no such file"):
        load_contexts(str(tmp_path / "missing.txt"))
    with pytest.raises(CtxlabError, match="bad contexts spec"):
        load_contexts("xquad:")
    with pytest.raises(CtxlabError, match="unknown split"):
        load_contexts("xquad:en:test", data_dir=FIXTURES)
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(CtxlabError, match="no contexts"):
        load_contexts(str(tmp_path / "empty.txt"))


# ------------------------------------------------------------------------------------------- splits


def test_split_article_indices():
    s = split_article_indices(48)
    assert [len(s[k]) for k in ("generator", "qa", "eval")] == [24, 12, 12]
    assert sorted(i for v in s.values() for i in v) == list(range(48))
    assert s == split_article_indices(48) and s != split_article_indices(48, seed=1)
    assert [len(v) for v in split_article_indices(10, (0.6, 0.2, 0.2)).values()] == [6, 2, 2]
    with pytest.raises(CtxlabError, match="fractions"):
        split_article_indices(48, (0.5, 0.5, 0.5))
    with pytest.raises(CtxlabError, match="non-empty"):
        split_article_indices(2)


def _check_disjoint(splits):
    titles = {name: {a.title for arts in by_lang.values() for a in arts} for name, by_lang in splits.items()}
    ids = {name: {q.id for arts in by_lang.values() for a in arts for p in a.paragraphs for q in p.qas}
           for name, by_lang in splits.items()}
    for x, y in (("generator", "qa"), ("generator", "eval"), ("qa", "eval")):
        assert not titles[x] & titles[y] and not ids[x] & ids[y]
    for by_lang in splits.values():  # every language version of an article in the same split
        first = [a.title for a in next(iter(by_lang.values()))]
        assert all([a.title for a in arts] == first for arts in by_lang.values())


def test_split_parallel_fixtures():
    by_lang = {lang: load_xquad(lang, FIXTURES) for lang in ("en", "de", "zh")}
    splits = split_parallel(by_lang)
    _check_disjoint(splits)
    assert [len(splits[k]["en"]) for k in ("generator", "qa", "eval")] == [2, 1, 1]
    eval_titles = {a.title for a in splits["eval"]["zh"]}
    assert {c.title for c in load_contexts("xquad:zh:eval", data_dir=FIXTURES)} == eval_titles
    gen_ctx = {c.text for c in load_contexts("xquad:zh:generator", data_dir=FIXTURES)}
    assert gen_ctx.isdisjoint(p.context for a in splits["eval"]["zh"] for p in a.paragraphs)
    by_lang["de"] = by_lang["de"][::-1]
    with pytest.raises(CtxlabError, match="not parallel: article 0"):
        check_parallel(by_lang)
    with pytest.raises(CtxlabError, match="not parallel: de has 3"):
        check_parallel({"en": by_lang["en"], "de": by_lang["de"][:3]})


def test_split_parallel_real_data(shared_data):
    splits = split_parallel({lang: load_xquad(lang, shared_data) for lang in XQUAD_LANGS})
    _check_disjoint(splits)
    assert sum(len(p.qas) for k in splits for a in splits[k]["hi"] for p in a.paragraphs) == 1190


# ------------------------------------------------------------------------------------------- report


def test_paired_bootstrap_ci():
    base = [0.0, 1.0, 0.5, 0.25] * 25
    same = paired_bootstrap_ci(base, base)
    assert (same.gain, same.low, same.high) == (0.0, 0.0, 0.0)
    shifted = paired_bootstrap_ci(base, [b + 0.1 for b in base])
    assert shifted.gain == pytest.approx(0.1)
    assert shifted.low == pytest.approx(0.1) and shifted.high == pytest.approx(0.1)
    rng = np.random.default_rng(0)
    b = rng.random(500)
    s = np.clip(b + rng.normal(0.05, 0.2, 500), 0, 1)
    ci = paired_bootstrap_ci(b, s, n_boot=3000)
    assert ci.low < ci.gain < ci.high and ci == paired_bootstrap_ci(b, s, n_boot=3000)
    half_normal = 1.96 * np.std(s - b, ddof=1) / np.sqrt(500)  # normal approximation of the 95% half-width
    assert (ci.high - ci.low) / 2 == pytest.approx(half_normal, rel=0.15)
    assert ci.p_not_better < 0.01
    with pytest.raises(CtxlabError, match="equal length"):
        paired_bootstrap_ci([1.0], [1.0, 0.0])
    with pytest.raises(CtxlabError, match="empty"):
        paired_bootstrap_ci([], [])


def test_gain_table_and_plot(tmp_path):
    per_lang = {"zh": ([0.5, 0.5, 0.5, 0.5], [0.6, 0.6, 0.6, 0.6]), "de": ([0.2, 0.4] * 10, [0.2, 0.4] * 10)}
    rows = gain_table(per_lang, n_boot=200)
    assert [r.lang for r in rows] == ["de", "zh", "avg"]
    assert rows[1].ci.gain == pytest.approx(0.1) and rows[0].ci.gain == 0.0
    assert rows[2].ci.gain == pytest.approx(0.05) and rows[2].ci.low == pytest.approx(0.05) and rows[2].n == 24
    table = format_gain_table(rows)
    assert "|zh|4|50.0|60.0|+10.0|[+10.0, +10.0]|0.000|" in table and table.startswith("|lang|n|")
    png = plot_gains(rows, tmp_path / "plots" / "gain.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(CtxlabError, match="zh: paired scores"):
        gain_table({"zh": ([0.1], [])})

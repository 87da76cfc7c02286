import json
from pathlib import Path

import pytest

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import CARD_SECTIONS, TaskRegistry
from ctxlab.tasks.xquad import (
    METRICS,
    OFFICIAL_LANGS,
    SHARED_XQUAD_DIR,
    TASKS,
    XQUAD_LANGS,
    exact_match,
    f1_score,
    find_xquad_langs,
    load_squad,
    load_xquad,
    make_task,
    normalize_answer,
    parse_squad,
    qa_scores,
    squad_samples,
    tasks_for_dir,
    to_squad_json,
)

FIXTURES = Path(__file__).parent / "fixtures" / "xquad"


# ------------------------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
    ("text", "lang", "expected"),
    [
        ("The Panthers' defense!", "en", "panthers defense"),
        ("Panthers’", "en", "panthers"),  # U+2019 is Unicode punctuation (Pf)
        ("Los Estados Unidos.", "es", "estados unidos"),
        ("Árbol, el más alto", "es", "árbol más alto"),
        ("Die Schweiz und Österreich!", "de", "schweiz und österreich"),
        ("Größe des Sees", "de", "größe sees"),
        ("những chiếc xe của tôi", "vi", "xe tôi"),
        ("Η Αθήνα\u037e", "el", "η αθήνα"),  # no Greek articles (not in MLQA); U+037E Greek question mark dropped
        ("«Москва» — столица", "ru", "москва столица"),
        ("الكتاب، الجديد", "ar", "كتاب جديد"),
        ("المال", "ar", "م"),  # official MLQA quirk: every "ال" is removed, even inside words
        ("नई दिल्ली, भारत।", "hi", "नई दिल्ली भारत"),  # danda U+0964 dropped
        ("2016年NFL的冠军。", "zh", "2016 年 nfl 的 冠 军"),
        ("黑豹队 (Carolina Panthers)", "zh-CN", "黑 豹 队 carolina panthers"),
        ("le Louvre", "fr", "le louvre"),  # unknown language: whitespace tokens, no articles
    ],
)
def test_normalize_answer(text, lang, expected):
    assert normalize_answer(text, lang) == expected


def test_squad_scheme_is_english_and_ascii_only():
    assert normalize_answer("The Panthers’", "zh", scheme="squad") == "panthers’"
    assert normalize_answer("瑞士和法国", "zh", scheme="squad") == "瑞士和法国"
    with pytest.raises(CtxlabError, match="scheme"):
        normalize_answer("x", "en", scheme="bleu")


def test_exact_match_and_f1_known_values():
    # pred {carolina, panthers} vs gold {panthers}: P=1/2, R=1 → F1=2/3
    assert exact_match("the Carolina Panthers", ["Panthers"], "en") == 0.0
    assert f1_score("the Carolina Panthers", ["Panthers"], "en") == pytest.approx(2 / 3)
    # max over gold answers
    assert exact_match("Denver Broncos", ["Broncos", "denver broncos."], "en") == 1.0
    # vs "broncos": 2/3; vs "broncos of denver": P=1, R=2/3 → 0.8; max → 0.8
    assert f1_score("Denver Broncos", ["Broncos", "the Broncos of Denver"], "en") == pytest.approx(0.8)
    assert exact_match("die Schweiz und Frankreich", "Schweiz und Frankreich", "de") == 1.0
    # hi: pred 3 tokens, gold 2, 2 common → P=2/3, R=1 → F1=0.8
    assert f1_score("नई दिल्ली भारत", ["नई दिल्ली"], "hi") == pytest.approx(0.8)
    # zh: characters are tokens: 5 vs 2 chars, 2 common → P=2/5, R=1 → F1=4/7; squad scheme sees 2 different tokens
    assert f1_score("瑞士和法国", ["瑞士"], "zh") == pytest.approx(4 / 7)
    assert f1_score("瑞士和法国", ["瑞士"], "zh", scheme="squad") == 0.0
    # fr has no article list: {le, louvre} vs {louvre} → 2/3
    assert f1_score("le Louvre", ["Louvre"], "fr") == pytest.approx(2 / 3)
    assert exact_match("Αθήνα", ["η Αθήνα"], "el") == 0.0
    assert f1_score("Αθήνα", ["η Αθήνα"], "el") == pytest.approx(2 / 3)
    # repeated tokens count with multiplicity: "new new york" vs "new york" → common 2, P=2/3, R=1
    assert f1_score("new new york", ["new york"], "en") == pytest.approx(0.8)
    # both empty after normalisation: EM 1, F1 0 (as in the official scripts)
    assert exact_match("!!", ["?"], "en") == 1.0 and f1_score("!!", ["?"], "en") == 0.0
    with pytest.raises(ValueError):
        f1_score("x", [], "en")


def test_qa_scores_keys():
    s = qa_scores("the Panthers", ["Panthers"], "en")
    assert set(s) == set(METRICS) and s["mlqa_em"] == 1.0 and s["exact_match"] == 1.0


# ------------------------------------------------------------------------------------------- loader


def test_loader_on_fixtures():
    for lang in ("en", "de", "zh"):
        arts = load_xquad(lang, FIXTURES)
        assert [a.title for a in arts] == ["Lake_Geneva", "Printing_press", "Photosynthesis", "Danube"]
        samples = list(squad_samples(arts, lang))
        assert len(samples) == 6
        for s in samples:
            (start, end), = s.evidence
            assert s.context[start:end] == s.reference[0]
    zh = {s.id: s for s in squad_samples(load_xquad("zh", FIXTURES), "zh")}
    assert zh["fx-lake-1"].reference == ["瑞士和法国"] and zh["fx-lake-1"].meta["answer_starts"] == [20]


def _write(tmp_path: Path, obj, name="bad.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


def _fixture_obj():
    return json.loads((FIXTURES / "xquad.en.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda o: o.pop("data"), "top level"),
        (lambda o: o["data"][1].pop("title"), r"article 1: \"title\""),
        (lambda o: o["data"][0]["paragraphs"][0].update(context=""), "article 0 .* paragraph 0"),
        (lambda o: o["data"][0]["paragraphs"][0]["qas"][1].update(id="fx-lake-1"), "fx-lake-1.*duplicate id"),
        (lambda o: o["data"][0]["paragraphs"][0]["qas"][0].update(answers=[]), "question 0 .*answers"),
        (lambda o: o["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=True), "answer_start"),
        (lambda o: o["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(answer_start=10_000), "answer_start"),
        (lambda o: o["data"][3]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start=3),
         r"article 3 \('Danube'\) paragraph 0 question 1 \(id fx-danube-2\) answer 0: context\[3:6\]"),
    ],
)
def test_loader_rejects_malformed_rows(tmp_path, mutate, match):
    obj = _fixture_obj()
    mutate(obj)
    path = _write(tmp_path, obj)
    with pytest.raises(CtxlabError, match=match) as e:
        load_squad(path)
    assert str(path) in str(e.value)


def test_loader_file_errors(tmp_path):
    with pytest.raises(CtxlabError, match="not found"):
        load_squad(tmp_path / "missing.json")
    bad = tmp_path / "x.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(CtxlabError, match="x.json: not valid"):
        load_squad(bad)
    with pytest.raises(CtxlabError, match="xquad.xx.json not found"):
        load_xquad("xx", FIXTURES)
    with pytest.raises(CtxlabError, match="invalid language"):
        load_xquad("../en", FIXTURES)


def test_unchecked_spans_and_roundtrip():
    obj = _fixture_obj()
    obj["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 1
    arts = parse_squad(obj, check_spans=False)
    assert arts[0].paragraphs[0].qas[0].answers[0][1] == 1
    good = load_squad(FIXTURES / "xquad.de.json")
    assert parse_squad(to_squad_json(good)) == good


def test_real_files_match_data_md(shared_data):
    ids_by_lang, titles_by_lang = {}, {}
    for lang in XQUAD_LANGS:
        arts = load_xquad(lang, shared_data)  # finds the xquad/ subfolder
        paragraphs = [p for a in arts for p in a.paragraphs]
        qas = [q for p in paragraphs for q in p.qas]
        assert (len(arts), len(paragraphs), len(qas)) == (48, 240, 1190), lang
        assert all(len(a.paragraphs) == 5 for a in arts)
        assert all(1 <= len(p.qas) <= 17 for p in paragraphs)
        assert all(len(q.answers) == 1 for q in qas)
        ids_by_lang[lang] = [q.id for q in qas]
        titles_by_lang[lang] = [a.title for a in arts]
    assert all(v == ids_by_lang["en"] for v in ids_by_lang.values())
    assert all(v == titles_by_lang["en"] for v in titles_by_lang.values())
    assert titles_by_lang["en"][:2] == ["Super_Bowl_50", "Warsaw"]
    zh = {s.id: s for s in make_task("zh").samples(shared_data / "xquad")}
    assert zh["56beb4343aeaaa14008c925b"].question == "黑豹队的防守丢了多少分？"
    assert zh["56beb4343aeaaa14008c925b"].meta["answer_starts"] == [10]
    assert find_xquad_langs(shared_data) == sorted(XQUAD_LANGS)


def test_default_data_dir_is_shared(shared_data):
    assert SHARED_XQUAD_DIR.resolve() == (shared_data / "xquad").resolve()
    first = next(TASKS[XQUAD_LANGS.index("en")].samples(None))
    assert first.id == "56beb4343aeaaa14008c925b" and first.reference == ["308"]


# ------------------------------------------------------------------------------------------- task


def test_tasks_and_card():
    assert [t.name for t in TASKS] == [f"xquad:{lang}" for lang in OFFICIAL_LANGS]
    assert set(OFFICIAL_LANGS) == {"ar", "de", "el", "en", "es", "hi", "ro", "ru", "th", "tr", "vi", "zh"}
    reg = TaskRegistry(TASKS)
    assert len(reg.resolve("xquad")) == 12 and reg.get("xquad:hi").languages == ("hi",)
    assert reg.get("xquad:th").lang == "th" and reg.get("xquad:ro").lang == "ro"
    sections = TASKS[0].card.sections()
    assert tuple(sections) == CARD_SECTIONS
    assert all(sections[name] for name in CARD_SECTIONS)
    assert "CC BY-SA 4.0" in sections["overview"]["license"]


def test_task_prompt_parse_score():
    task = make_task("de")
    s = next(iter(task.samples(FIXTURES)))
    p = task.prompt(s)
    assert p.startswith("Context: " + s.context) and s.question in p and p.endswith("Answer:")
    assert task.parse("\n  die Schweiz und Frankreich \nQuestion: next") == "die Schweiz und Frankreich"
    assert task.parse("  \n") == ""
    scores = task.score(task.parse(" Schweiz und Frankreich."), s)
    assert scores == {"mlqa_em": 1.0, "mlqa_f1": 1.0, "exact_match": 0.0, "f1": pytest.approx(6 / 7)}


def test_other_language_file_via_data_dir(tmp_path):
    (tmp_path / "xquad.ro.json").write_text((FIXTURES / "xquad.en.json").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "xquad.bad name.json").write_text("{}", encoding="utf-8")
    tasks = tasks_for_dir(tmp_path)
    assert [t.name for t in tasks] == ["xquad:ro"]
    assert len(list(tasks[0].samples(tmp_path))) == 6
    assert [t.name for t in tasks_for_dir(FIXTURES)] == ["xquad:de", "xquad:en", "xquad:zh"]
    with pytest.raises(CtxlabError, match="invalid language"):
        make_task("x y")

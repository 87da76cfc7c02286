"""Sandbox task generators (ctxlab/tasks/sandbox): one needle per example, validators, lengths, determinism."""

import ast
import dataclasses
import re
from functools import cache

import pytest

from ctxlab.errors import CtxlabError
from ctxlab.tasks.base import CARD_SECTIONS, TaskRegistry
from ctxlab.tasks.sandbox import (
    GENERATORS,
    SCORERS,
    TASKS,
    approx_count_tokens,
    bank,
    check_log,
    code,
    kv,
    render_prompt,
    render_target,
)

LENGTHS = (256, 1024, 4096)
KINDS = ("bank", "code", "kv")


def seeds(length: int) -> range:
    return range(24) if length < 4096 else range(8)


@cache
def example(kind: str, seed: int, length: int):
    return GENERATORS[kind](seed, length)


def all_examples(kind: str):
    return [example(kind, s, n) for n in LENGTHS for s in seeds(n)]


# ------------------------------------------------------------------------------------------------ bank


def test_bank_exactly_one_anomaly_and_scorer():
    types = set()
    for ex in all_examples("bank"):
        found = check_log(ex.context)
        assert [f"{a.kind} {a.tx}" for a in found] == [ex.answer], ex.meta
        types.add(ex.meta["anomaly"])
        assert bank.score(ex.answer, ex) and bank.score(f"blah\nFinal: {ex.answer}", ex)
        kind, tx = ex.answer.split()
        other_tx = next(t for t in re.findall(r"^(TX\d{4}) ", ex.context, re.M) if t != tx)
        assert not bank.score(f"{kind} {other_tx}", ex)
        other_kind = next(k for k in bank.ANOMALIES if k != kind)
        assert not bank.score(f"{other_kind} {tx}", ex)
    assert types == set(bank.ANOMALIES)


LEDGER = """Bank ledger. Initial balances: A1 100, A2 50.
TX0001 deposit A1 amount 20: A1 100 -> 120
TX0002 transfer A1 -> A2 amount 30: A1 120 -> 90, A2 50 -> 80 (memo: rent)
End of ledger."""


@pytest.mark.parametrize(
    "line, expected",
    [
        ("TX0003 withdraw A2 amount 10: A2 80 -> 70", []),
        ("TX0003 withdraw A2 amount 10: A2 80 -> 60", ["CALC_ERROR TX0003"]),
        ("TX0003 transfer A2 -> A1 amount 10: A2 80 -> 70, A1 90 -> 110", ["CALC_ERROR TX0003"]),
        ("TX0003 withdraw A2 amount 90: A2 80 -> -10", ["NEGATIVE_BAL TX0003"]),
        ("TX0003 withdraw A1 amount 10: A1 120 -> 110", ["LOST_UPDATE TX0003"]),  # 120 was A1's balance before TX2
        ("TX0003 withdraw A1 amount 10: A1 77 -> 67", ["STATE_MISMATCH TX0003"]),
        ("TX0002 transfer A1 -> A2 amount 30: A1 90 -> 60, A2 80 -> 110", ["DUPLICATE_TXN TX0002"]),
        ("TX0003 withdraw A9 amount 10: A9 80 -> 70", ["UNKNOWN_ACCOUNT TX0003"]),
    ],
)
def test_check_log_rules(line, expected):
    text = LEDGER.replace("End of ledger.", f"{line}\nEnd of ledger.")
    assert [f"{a.kind} {a.tx}" for a in check_log(text)] == expected
    assert check_log(LEDGER) == []


def test_bank_parse_answer_is_lenient():
    assert bank.parse_answer("the answer is {negative_bal, tx42}") == "NEGATIVE_BAL TX0042"
    assert bank.parse_answer("CALC_ERROR at TX0007 ... Final: LOST_UPDATE TX0042.") == "LOST_UPDATE TX0042"
    assert bank.parse_answer("TX0042 is a DUPLICATE_TXN") == "DUPLICATE_TXN TX0042"
    assert bank.parse_answer("no idea") is None


# ------------------------------------------------------------------------------------------------ code


def test_code_exactly_one_bug_and_scorer():
    kinds = set()
    for ex in all_examples("code"):
        path, line = ex.meta["path"], ex.meta["line"]
        shown = code.parse_excerpts(ex.context)
        diffs = [(p, n) for p, n, text in shown if code.source_lines(p)[n - 1].rstrip() != text]
        assert diffs == [(path, line)] and ex.answer == f"{path}:{line}"
        lines = list(code.source_lines(path))
        assert lines[line - 1] == ex.meta["original"] != ex.meta["mutated"]
        lines[line - 1] = ex.meta["mutated"]
        ast.parse("\n".join(lines))  # the mutated module still parses
        kinds.add(ex.meta["kind"])
        assert code.score(ex.answer, ex) and code.score(f"Bug: {path}:L{line}\nFinal: ./{path}:{line}", ex)
        assert not code.score(f"{path}:{line + 1}", ex) and not code.score(f"{path}:{line - 1}", ex)
        other = next((p, n) for p, n, _ in shown if p != path) if len({p for p, _, _ in shown}) > 1 else None
        if other:
            assert not code.score(f"{other[0]}:{other[1]}", ex)
    assert kinds == set(code.KINDS)


def test_code_modules_and_parser():
    assert list(code.MODULES) == sorted(code.MODULES) and set(code.available_modules()) == set(code.MODULES)
    assert code.parse_answer("in Lib/json/decoder.py line 12") == "json/decoder.py:12"
    assert code.parse_answer("a.py:1 then Final: b/c.py:L20 (not d.py:3)") == "b/c.py:20"
    assert code.parse_answer("nothing here") is None


def test_code_hint_levels():
    ex = code.generate(3, 512, hint="kind")
    assert code.MUTATIONS[ex.meta["kind"]] in ex.question and ex.meta["scope"] not in ex.question
    ex = code.generate(3, 512)
    assert f"`{ex.meta['scope']}`" in ex.question or "module level" in ex.question


# ------------------------------------------------------------------------------------------------ kv


def test_kv_single_needle_and_scorer():
    for ex in all_examples("kv"):
        pairs = kv.parse_pairs(ex.context)
        assert pairs[ex.meta["key"]] == [ex.answer] and sum(map(len, pairs.values())) == len(pairs)
        assert kv.score(ex.answer, ex) and kv.score(f"It is 12.\nFinal: {ex.answer}", ex)
        other = next(v[0] for k, v in pairs.items() if k != ex.meta["key"])
        assert not kv.score(f"Final: {other}", ex)


def test_kv_similarity_controls_shared_prefix():
    near = [kv.generate(s, 1024, similarity=1.0) for s in range(4)]
    far = [kv.generate(s, 1024, similarity=0.0) for s in range(4)]
    assert all(e.meta["mean_shared_prefix"] == 4 for e in near)  # < 107 distractors: all differ in the last word
    assert all(e.meta["mean_shared_prefix"] < 0.2 for e in far)
    mid = kv.generate(0, 1024, similarity=0.5).meta["mean_shared_prefix"]
    assert 1.5 < mid < 2.5


# ------------------------------------------------------------------------------------------------ common


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", LENGTHS)
def test_length_within_5_percent(kind, length):
    for s in seeds(length):
        ex = example(kind, s, length)
        n = approx_count_tokens(render_prompt(ex))
        assert n == ex.meta["n_tokens"] and abs(n - length) <= 0.05 * length, (kind, s, n)


@pytest.mark.parametrize("kind", KINDS)
def test_other_token_counters(kind):
    digits = lambda t: len(re.findall(r" ?[A-Za-z]+|\d| ?[^\sA-Za-z\d]+|\s+", t))  # noqa: E731 (Qwen-like digits)
    for s in range(4):
        for counter in (digits, lambda t: len(t) // 4):
            ex = GENERATORS[kind](s, 1024, count_tokens=counter)
            assert abs(counter(render_prompt(ex)) - 1024) <= 0.05 * 1024


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic(kind):
    a, b = GENERATORS[kind](7, 1024), GENERATORS[kind](7, 1024)
    assert a == b
    assert GENERATORS[kind](8, 1024).context != a.context


@pytest.mark.parametrize("kind", KINDS)
def test_needle_fixed_across_lengths_and_evidence(kind):
    for s in range(8):
        needles = set()
        for n in LENGTHS:
            ex = example(kind, s, n)
            texts = tuple(ex.context[a:b] for a, b in ex.evidence)
            assert texts and all(t and "\n" not in t for t in texts)
            if kind == "bank":
                assert all(t.startswith("TX") for t in texts) and ex.answer.split()[1] in texts[-1]
            elif kind == "code":
                assert texts == (f"{ex.meta['line']}| {ex.meta['mutated']}".rstrip(),)
            else:
                assert texts == (f"{ex.meta['key']}: {ex.answer}",)
            needles.add((ex.answer, ex.question, texts))
        assert len(needles) == 1, needles


@pytest.mark.parametrize("kind", KINDS)
def test_haystack_grows_nested(kind):
    short, long = example(kind, 1, 1024), example(kind, 1, 4096)
    if kind == "bank":
        ids = lambda ex: re.findall(r"^TX\d+", ex.context, re.M)  # noqa: E731
        assert set(ids(short)) < set(ids(long))
    elif kind == "code":
        assert {(p, n) for p, n, _ in code.parse_excerpts(short.context)} < {
            (p, n) for p, n, _ in code.parse_excerpts(long.context)}
    else:
        assert set(short.context.splitlines()) < set(long.context.splitlines())


@pytest.mark.parametrize("kind", KINDS)
def test_render_prompt_and_target(kind):
    ex = example(kind, 2, 1024)
    assert render_prompt(ex).startswith(ex.context) and ex.question in render_prompt(ex, thinking=True)
    assert render_prompt(ex) != render_prompt(ex, thinking=True)
    assert render_target(ex) == f"Final: {ex.answer}"
    target = render_target(ex, thinking=True)
    assert target.startswith(ex.scratchpad) and target.endswith(f"\nFinal: {ex.answer}")
    assert ex.scratchpad.rstrip(".").endswith(ex.answer)
    assert SCORERS[kind](target, ex) and SCORERS[kind](ex.scratchpad, ex)


def test_tasks_adapters():
    registry = TaskRegistry(TASKS)
    assert registry.names() == ["sandbox:bank", "sandbox:code", "sandbox:kv"]
    assert [t.name for t in registry.resolve("sandbox")] == registry.names()
    for task in TASKS:
        assert task.version == "1.0" and task.metrics == ("accuracy",)
        assert all(task.card.sections()[s] and all(task.card.sections()[s].values()) for s in CARD_SECTIONS)
        small = dataclasses.replace(task, n_tokens=512, n_samples=3, seed=5)
        samples = list(small.samples(None))
        assert [s.id for s in samples] == [f"{task.name}/512/{i}" for i in (5, 6, 7)]
        for s in samples:
            assert s.context in small.prompt(s) and s.evidence
            assert small.score(small.parse(f"thinking...\nFinal: {s.reference}"), s) == {"accuracy": 1.0}
            assert small.score(small.parse("no answer"), s) == {"accuracy": 0.0}
            assert small.score(s.reference, s) == {"accuracy": 1.0}


def test_invalid_inputs():
    with pytest.raises(CtxlabError):
        bank.generate(0, 10)
    with pytest.raises(CtxlabError):
        bank.generate(-1, 512)
    with pytest.raises(CtxlabError):
        bank.generate(0, 512, anomaly="FRAUD")
    with pytest.raises(CtxlabError):
        code.generate(0, 512, kind="typo")
    with pytest.raises(CtxlabError):
        kv.generate(0, 512, similarity=1.5)
    with pytest.raises(CtxlabError, match="cannot build"):
        code.generate(0, 70)  # the question alone is longer
    assert code.generate(0, 70, tolerance=None).meta["n_tokens"] > 70  # closest example instead of an error
    with pytest.raises(CtxlabError):
        list(dataclasses.replace(TASKS[0], n_samples=0).samples(None))

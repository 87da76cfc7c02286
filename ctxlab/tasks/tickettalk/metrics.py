"""TicketTalk next-action metrics: corpus BLEU on agent replies, exact match and per-argument F1 on API calls.

A prediction or reference is an *action*: agent text and/or one API call, written in either the TSV target
markup (`[A]text[PN]api[PAN]arg[PAV]value…`) or the history markup (`<A>text<PN>api<PAN>arg<PAV>value…`);
plain text is an agent reply. `parse_action` reads model output leniently (it never raises and stops at the
first item that is not part of the agent's action, e.g. a hallucinated `<PR>` or `<U>`).

Per-sample values are sufficient statistics, so corpus scores come from stored values without rescoring, in
the format of the metric registry in ctxlab/tasks/metrics.py (aggregates on a 0-100 scale):
- `bleu`: sacrebleu segment statistics [hyp_len, ref_len, correct_1..4, total_1..4] of the predicted reply
  (empty if none) against the reference reply; all zeros when the reference has no reply (neutral in the sum).
  Same format as the registry's `bleu` (13a): its aggregate is corpus BLEU over replies.
- `api_exact_match`: (hit, 1) when the reference has a call, else (0, 0); aggregate 100·Σhit/Σcount. A hit
  needs the same API name and the same multiset of (argument, value) pairs; order is ignored and values are
  compared after casefolding and whitespace collapsing (`strict=True`: verbatim).
- `api_arg_f1`: (tp, n_pred, n_ref) over (api, argument, value) triples of the predicted and reference calls
  (so a call of the wrong API earns nothing, and a spurious call on a reply turn costs precision);
  aggregate micro F1 = 100·2Σtp/(Σn_pred+Σn_ref).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ctxlab.tasks.tickettalk.formats import ApiCall, Target, format_item, format_target

METRICS = ("bleu", "api_exact_match", "api_arg_f1")
_TAG = re.compile(r"(<(?:U|A|S|C|PN|PAN|PAV|PR|PRAN|PRAV)>|\[(?:A|PN|PAN|PAV)\])")


@dataclass(frozen=True)
class Action:
    """What the agent does next: a reply, an API call, or a reply followed by a call."""

    text: str | None = None
    call: ApiCall | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form: the TSV target string plus its parts (`call` in `<PN>…` history markup)."""
        target = format_target(Target(self.text, self.call)) if self.text is not None or self.call else ""
        return {"target": target, "text": self.text, "call": format_item(self.call) if self.call else None}


def parse_action(output: str | Mapping[str, Any] | Action | Target | None) -> Action:
    """Read an action from model output or a stored reference (see the module docstring). Never raises."""
    if isinstance(output, Action):
        return output
    if isinstance(output, Target):
        return Action(output.text, output.call)
    if output is None:
        return Action()
    if isinstance(output, Mapping):
        return parse_action(str(output.get("target") or ""))
    parts = _TAG.split(str(output).strip())
    toks = [(parts[i][1:-1], parts[i + 1]) for i in range(1, len(parts), 2)]
    text = parts[0].strip() if parts[0].strip() else None
    i = 0
    if text is None and toks and toks[0][0] == "A":
        text, i = toks[0][1], 1
    call = None
    if i < len(toks) and toks[i][0] == "PN" and toks[i][1].strip():
        name, args, i = toks[i][1].strip(), [], i + 1
        while i < len(toks) and toks[i][0] == "PAN":
            has_value = i + 1 < len(toks) and toks[i + 1][0] == "PAV"
            args.append((toks[i][1].strip(), toks[i + 1][1].strip() if has_value else ""))
            i += 2 if has_value else 1
        call = ApiCall(name, tuple(args))
    return Action(text, call)


def _single(reference: Any) -> Any:
    """TicketTalk has one reference per sample; a list of references (the metric registry's form) uses its first."""
    return reference[0] if isinstance(reference, (list, tuple)) and reference else reference


def normalize_value(value: str) -> str:
    return " ".join(value.casefold().split())


def _triples(call: ApiCall | None, strict: bool) -> Counter[tuple[str, str, str]]:
    if call is None:
        return Counter()
    norm = (lambda v: v) if strict else normalize_value
    return Counter((call.name, k if strict else k.strip(), norm(v)) for k, v in call.args)


def api_exact_match(prediction: Any, reference: Any, *, strict: bool = False) -> tuple[float, float]:
    """(1, 1) / (0, 1) when the reference has a call; (0, 0) when it does not."""
    ref, pred = parse_action(_single(reference)).call, parse_action(prediction).call
    if ref is None:
        return (0.0, 0.0)
    hit = pred is not None and pred.name == ref.name and _triples(pred, strict) == _triples(ref, strict)
    return (float(hit), 1.0)


def api_arg_counts(prediction: Any, reference: Any, *, strict: bool = False) -> tuple[float, float, float]:
    """(true positives, predicted, reference) (api, argument, value) triples."""
    p, r = _triples(parse_action(prediction).call, strict), _triples(parse_action(_single(reference)).call, strict)
    return (float(sum((p & r).values())), float(sum(p.values())), float(sum(r.values())))


@cache
def _bleu():
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="13a")


def bleu_stats(prediction: Any, reference: Any) -> tuple[float, ...]:
    """sacrebleu 13a statistics of the predicted reply against the reference reply (zeros: no reference reply)."""
    ref = parse_action(_single(reference)).text
    if ref is None:
        return (0.0,) * 10
    hyp = parse_action(prediction).text or ""
    return tuple(float(x) for x in _bleu()._extract_corpus_statistics([hyp], [[ref]])[0])


def sample_scores(prediction: Any, reference: Any) -> dict[str, tuple[float, ...]]:
    """All three per-sample values for one (prediction, reference) pair."""
    return {"bleu": bleu_stats(prediction, reference), "api_exact_match": api_exact_match(prediction, reference),
            "api_arg_f1": api_arg_counts(prediction, reference)}


# ------------------------------------------------------------------------------------------- aggregation


def _sums(values: Sequence[Sequence[float]], width: int) -> list[float]:
    sums = [0.0] * width
    for v in values:
        if len(v) != width:
            raise ValueError(f"expected {width} statistics per sample, got {len(v)}")
        sums = [a + float(b) for a, b in zip(sums, v, strict=True)]
    return sums


def corpus_bleu(values: Sequence[Sequence[float]]) -> float:
    """Corpus BLEU (0-100) from summed segment statistics; equals sacrebleu.corpus_bleu on the replies."""
    totals = [int(round(x)) for x in _sums(values, 10)]
    return float(_bleu()._compute_score_from_stats(totals).score)


def exact_match_score(values: Sequence[Sequence[float]]) -> float:
    hit, n = _sums(values, 2)
    return 100.0 * hit / n if n else 0.0


def arg_f1_score(values: Sequence[Sequence[float]]) -> float:
    tp, n_pred, n_ref = _sums(values, 3)
    return 100.0 * 2 * tp / (n_pred + n_ref) if n_pred + n_ref else 0.0


# name → (description, per-sample function (prediction, reference or [reference]), aggregate of per-sample values)
METRIC_SPECS = {
    "bleu": ("sacrebleu corpus BLEU (13a) over agent replies", bleu_stats, corpus_bleu),
    "api_exact_match": ("API call exact match (name + argument multiset, casefolded values)", api_exact_match,
                        exact_match_score),
    "api_arg_f1": ("micro F1 over (api, argument, value) triples of API calls", api_arg_counts, arg_f1_score),
}


def aggregate(rows: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, float]:
    """Scores (0-100) of a list of `sample_scores` / `Task.score` dicts."""
    return {name: spec[2]([r[name] for r in rows]) for name, spec in METRIC_SPECS.items()}

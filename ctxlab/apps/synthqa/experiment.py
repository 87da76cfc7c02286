"""End-to-end synthetic multilingual QA experiment (after Shakeri et al. 2020) with small scratch models.

Stages (all training through the one loop, `ctxlab.train.run_training("sft"|"pretrain", config)`):
 1. data     XQuAD in `langs`, article-level split (`split_parallel`): generator / qa / eval articles, identical in
             every language. Eval-split files are written as `data/eval/xquad.LANG.json` (usable by `ctxlab eval`).
 2. init     a byte-level BPE tokenizer trained on the *train-split* contexts (generator + qa articles, all
             languages) and a random Qwen3-architecture model (ctxlab.train.scratch).
 3. pretrain (optional) LM on the same train-split contexts: a stand-in for the multilingual pretraining of mT5.
 4. generator SFT on gold QA of the generator-split articles: English plus the translated samples in every
             other language ("context: C" → "question: Q answer: A").
 5. qa_base  SFT of a generative QA model on English gold only (generator + qa articles), `xquad:LANG` prompt.
 6. synth    the generator samples QA pairs on the qa-split contexts in every language; filters from
             ctxlab/apps/synthqa/generator.py; optional round trip with qa_base (trained on English only; off by default
             because at this scale it answers almost nothing and would drop every pair).
 7. qa_aug   same start, steps and seed as qa_base, on English gold + the synthetic data.
 8. eval     both QA models, greedy, on the eval split per language: MLQA-normalised EM/F1 (and the official
             English SQuAD normaliser in results.json); paired bootstrap gain table (markdown) and PNG.
No eval-split context reaches the tokenizer, pretraining, or any SFT file: `check_disjoint` searches every training
file for every eval context right after writing it (before training on it) and the run fails if one is found.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ctxlab.apps.synthqa.generator import (
    DEFAULT_FRACTIONS,
    Context,
    format_stats,
    generation_prompt,
    generation_target,
    run_synth_qa,
    save_synth_qa,
    split_parallel,
)
from ctxlab.apps.synthqa.report import GainRow, format_gain_table, gain_table, plot_gains
from ctxlab.apps.synthqa.run import TextModel, generator_prompt, make_answer, make_generate, qa_parse, qa_prompt
from ctxlab.errors import CtxlabError
from ctxlab.fileio import write_jsonl_atomic
from ctxlab.tasks.xquad import (
    XQUAD_LANGS,
    Article,
    check_lang,
    find_xquad_langs,
    load_squad,
    load_xquad,
    qa_scores,
    squad_samples,
    to_squad_json,
)

STAGES = ("data", "init", "pretrain", "generator", "qa_base", "synth", "qa_aug", "eval")


@dataclass(frozen=True)
class ExperimentConfig:
    out_dir: str
    data_dir: str | None = None  # holds xquad.LANG.json (default: the shared XQuAD data)
    langs: tuple[str, ...] = XQUAD_LANGS  # must include "en" (the gold training language)
    max_articles: int = 0  # first N parallel articles (0 = all 48)
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS  # generator / qa / eval articles
    split_seed: int = 0
    seed: int = 0
    threads: int = 1  # on shared cores, 2 OpenMP threads per process can be ~10x slower than 1 (measured)
    # tokenizer and model (Qwen3 architecture; intermediate = 3 * hidden, 4 heads, 2 KV heads)
    vocab_size: int = 2048
    hidden: int = 128
    layers: int = 2
    max_len: int = 4096
    # training
    seq_len: int = 512  # longest SFT row in tokens; longer rows are skipped (counted in results.json)
    pretrain_steps: int = 600  # 0 = no pretraining
    pretrain_seq_len: int = 512
    generator_steps: int = 900
    qa_steps: int = 500  # both QA models
    batch_size: int = 8
    lr: float = 3e-3
    heldout: float = 0.05
    # synthetic data
    per_context: int = 1
    temperature: float = 0.7
    top_p: float = 0.95
    # The round trip needs a QA model that answers correctly; at this scale the English-gold model answers almost
    # nothing, so it would drop every pair (the CLI keeps it on by default; enable here with roundtrip=True).
    roundtrip: bool = False
    min_roundtrip_f1: float = 0.5
    gen_max_new_tokens: int = 40
    qa_max_new_tokens: int = 16
    infer_batch_size: int = 32
    # report
    max_eval_questions: int = 80  # first N questions per language, parallel across languages (0 = all)
    n_boot: int = 2000

    def __post_init__(self) -> None:
        if "en" not in self.langs:
            raise CtxlabError("langs must include 'en' (the gold training language)")
        for lang in self.langs:
            check_lang(lang)
        if len(set(self.langs)) != len(self.langs):
            raise CtxlabError(f"duplicate language in {self.langs}")
        for name in ("max_articles", "split_seed", "seed", "pretrain_steps", "max_eval_questions", "threads"):
            if getattr(self, name) < 0:
                raise CtxlabError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("vocab_size", "hidden", "layers", "max_len", "seq_len", "pretrain_seq_len", "generator_steps",
                     "qa_steps", "batch_size", "per_context", "gen_max_new_tokens", "qa_max_new_tokens",
                     "infer_batch_size"):
            if getattr(self, name) < 1:
                raise CtxlabError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % 8:
            raise CtxlabError(f"hidden must be a multiple of 8, got {self.hidden}")
        if self.per_context > 1 and self.temperature == 0:
            raise CtxlabError("per_context > 1 needs temperature > 0 (greedy repeats are duplicates)")
        if not 0.0 <= self.min_roundtrip_f1 <= 1.0:
            raise CtxlabError(f"min_roundtrip_f1 must be in [0, 1], got {self.min_roundtrip_f1}")


# Presets. DEFAULT is sized for <= 25 minutes on 2 shared CPU cores (see docs/synthqa_results.md for the measured
# steps/s); TINY runs end to end in well under a minute (tests).
DEFAULT: dict[str, Any] = {}
TINY: dict[str, Any] = dict(
    langs=("en", "de", "zh"), max_articles=8, vocab_size=400, hidden=32, layers=1, max_len=2048, seq_len=1024,
    pretrain_steps=2, pretrain_seq_len=128, generator_steps=3, qa_steps=3, batch_size=4, heldout=0.0,
    per_context=2, temperature=1.0, roundtrip=True, gen_max_new_tokens=12, qa_max_new_tokens=6, max_eval_questions=12,
    n_boot=200,
)


# ---------------------------------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[synthqa {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _contexts(articles: Sequence[Article]) -> list[str]:
    return [p.context for a in articles for p in a.paragraphs]


def load_split(cfg: ExperimentConfig) -> dict[str, dict[str, list[Article]]]:
    """split → lang → articles (the first `max_articles` parallel articles, split at article level)."""
    have = set(find_xquad_langs(cfg.data_dir))
    missing = [lang for lang in cfg.langs if lang not in have]
    if missing:
        where = cfg.data_dir or "the shared XQuAD data"
        raise CtxlabError(f"no xquad.{missing[0]}.json in {where} (found: {', '.join(sorted(have)) or 'none'})")
    by_lang = {lang: load_xquad(lang, cfg.data_dir) for lang in cfg.langs}
    if cfg.max_articles:
        by_lang = {lang: arts[: cfg.max_articles] for lang, arts in by_lang.items()}
    return split_parallel(by_lang, cfg.fractions, cfg.split_seed)


def check_disjoint(eval_contexts: Iterable[str], files: Iterable[Path]) -> dict[str, int]:
    """Raise if any eval context occurs (as a substring) in any of `files`; returns {file: characters searched}.

    JSON/JSONL files are searched in their decoded strings (escapes undone), other files as text."""
    contexts = [c for c in dict.fromkeys(eval_contexts) if c.strip()]
    searched: dict[str, int] = {}
    for f in files:
        raw = f.read_text(encoding="utf-8")
        if f.suffix == ".jsonl":
            text = "\n".join(_strings([json.loads(ln) for ln in raw.splitlines() if ln.strip()]))
        elif f.suffix == ".json":
            text = "\n".join(_strings(json.loads(raw)))
        else:
            text = raw
        for c in contexts:
            if c in text:
                raise CtxlabError(f"leak: an eval-split context occurs in training file {f}: {c[:60]!r}...")
        searched[str(f)] = len(text)
    return searched


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


class _RowWriter:
    """SFT rows kept when prompt + completion + end token fit `seq_len` tokens; the others are counted."""

    def __init__(self, tokenizer: Any, seq_len: int):
        self.tok, self.seq_len = tokenizer, seq_len

    def fit(self, rows: Sequence[dict[str, str]]) -> tuple[list[dict[str, str]], int]:
        if not rows:
            return [], 0
        p = self.tok.encode_batch([r["prompt"] for r in rows], add_special_tokens=False)
        c = self.tok.encode_batch([r["completion"] for r in rows], add_special_tokens=False)
        kept = [r for r, a, b in zip(rows, p, c, strict=True) if len(a) + len(b) + 1 <= self.seq_len]
        return kept, len(rows) - len(kept)


def generator_rows(articles_by_lang: Mapping[str, Sequence[Article]]) -> list[dict[str, str]]:
    """Gold QA of every language as generator SFT rows (English gold + the translated samples)."""
    return [{"prompt": generator_prompt(generation_prompt(p.context)),
             "completion": generation_target(q.question, q.answers[0][0]), "lang": lang}
            for lang, arts in articles_by_lang.items() for a in arts for p in a.paragraphs for q in p.qas]


def qa_rows(articles: Sequence[Article], lang: str, source: str) -> list[dict[str, str]]:
    """QA SFT rows: the `xquad:LANG` prompt → " answer" (the first gold answer)."""
    return [{"prompt": qa_prompt(p.context, q.question), "completion": " " + q.answers[0][0], "lang": lang,
             "source": source} for a in articles for p in a.paragraphs for q in p.qas]


def _train(kind: str, name: str, cfg: ExperimentConfig, init: Path, data: dict[str, Any], steps: int,
           runs: Path) -> Path:
    from ctxlab.train import run_training

    run_dir = runs / name
    conf = {
        "out_dir": str(run_dir), "seed": cfg.seed, "threads": cfg.threads, "model": {"init": str(init)},
        "data": data,
        "optim": {"lr": cfg.lr, "warmup_steps": max(1, steps // 10), "max_steps": steps,
                  "batch_size": cfg.batch_size, "weight_decay": 0.1, "min_lr_ratio": 0.1},
        "eval": {"every": 0, "max_batches": 4}, "checkpoint": {"every": 0, "keep": 1},
    }
    path = runs.parent / "configs" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(conf, indent=2) + "\n")
    _log(f"{name}: ctxlab train {kind} --config {path}")
    run_training(kind, path)
    return run_dir / "final"


def _build_init(cfg: ExperimentConfig, corpus: Path, out: Path) -> Path:
    from ctxlab.train.scratch import build_checkpoint

    texts = corpus.read_text(encoding="utf-8").split("\n\n")
    h = cfg.hidden
    return build_checkpoint(out, texts, size="tiny", vocab_size=cfg.vocab_size, max_len=cfg.max_len, seed=cfg.seed,
                            individual_digits=True, hidden_size=h, intermediate_size=3 * h,
                            num_hidden_layers=cfg.layers, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=h // 4)


# ---------------------------------------------------------------------------------------------------- eval


@dataclass
class EvalOutput:
    scores: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)  # model → lang → per sample
    predictions: list[dict[str, Any]] = field(default_factory=list)


def evaluate_models(models: Mapping[str, Path], eval_split: Mapping[str, Sequence[Article]], cfg: ExperimentConfig,
                    out: EvalOutput | None = None) -> EvalOutput:
    """Greedy answers of each model on the eval split, scored per sample (XQuAD task prompt, parse and metrics)."""
    out = out or EvalOutput()
    samples = {lang: list(squad_samples(arts, lang)) for lang, arts in eval_split.items()}
    if cfg.max_eval_questions:
        samples = {lang: s[: cfg.max_eval_questions] for lang, s in samples.items()}
    for name, path in models.items():
        lm = TextModel.load(path, batch_size=cfg.infer_batch_size)
        for lang, ss in samples.items():
            gens = lm.complete([qa_prompt(s.context, s.question) for s in ss], max_new_tokens=cfg.qa_max_new_tokens,
                               stop=["\n"])
            per = out.scores.setdefault(name, {}).setdefault(lang, [])
            for s, g in zip(ss, gens, strict=True):
                pred = qa_parse(g)
                sc = qa_scores(pred, s.reference, lang)
                per.append(sc)
                out.predictions.append({"model": name, "lang": lang, "id": s.id, "prediction": pred,
                                        "golds": s.reference, **sc})
        _log(f"eval {name}: " + " ".join(
            f"{lang} F1 {100 * sum(x['mlqa_f1'] for x in v) / max(1, len(v)):.1f}"
            for lang, v in out.scores[name].items()))
    return out


def gain_rows(ev: EvalOutput, metric: str, n_boot: int, seed: int) -> list[GainRow]:
    base, aug = ev.scores["qa_base"], ev.scores["qa_aug"]
    return gain_table({lang: ([x[metric] for x in base[lang]], [x[metric] for x in aug[lang]]) for lang in base},
                      n_boot=n_boot, seed=seed)


# ---------------------------------------------------------------------------------------------------- run


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run all stages under cfg.out_dir (which must be new or empty); returns the results.json content."""
    out = Path(cfg.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CtxlabError(f"{out} exists and is not an empty directory; choose a new --out")
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    timings: dict[str, float] = {}
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data, runs = out / "data", out / "runs"

    def tick(stage: str, t0: float) -> None:
        timings[stage] = round(time.perf_counter() - t0, 1)
        _log(f"{stage} done in {timings[stage]:.1f}s")

    # 1. data
    t0 = time.perf_counter()
    split = load_split(cfg)
    for lang, arts in split["eval"].items():
        (data / "eval").mkdir(parents=True, exist_ok=True)
        (data / "eval" / f"xquad.{lang}.json").write_text(
            json.dumps(to_squad_json(arts), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    manifest = {name: [a.title for a in part["en"]] for name, part in split.items()}
    (data / "split.json").write_text(json.dumps(manifest, indent=1) + "\n")
    train_ctx = [c for name in ("generator", "qa") for lang in cfg.langs for c in _contexts(split[name][lang])]
    corpus = data / "train_contexts.txt"
    corpus.write_text("\n\n".join(train_ctx) + "\n", encoding="utf-8")
    eval_ctx = [c for lang in cfg.langs for c in _contexts(split["eval"][lang])]
    searched = check_disjoint(eval_ctx, [corpus])  # every training file is checked before it is used
    _log(f"split: {', '.join(f'{k} {len(v)} articles' for k, v in manifest.items())}; {len(cfg.langs)} languages")
    tick("data", t0)

    # 2. tokenizer + random model; 3. pretraining on train-split contexts
    t0 = time.perf_counter()
    init = _build_init(cfg, corpus, out / "init")
    tick("init", t0)
    t0 = time.perf_counter()
    if cfg.pretrain_steps:
        base = _train("pretrain", "pretrain", cfg, init, {"seq_len": cfg.pretrain_seq_len, "heldout": cfg.heldout,
                                                          "text": [{"path": str(corpus)}]}, cfg.pretrain_steps, runs)
    else:
        base = init
    tick("pretrain", t0)
    from ctxlab.tokenizer import Tokenizer

    writer = _RowWriter(Tokenizer.from_dir(init), cfg.seq_len)
    skipped: dict[str, int] = {}

    def sft(name: str, rows: list[dict[str, str]], steps: int) -> Path:
        kept, skipped[name] = writer.fit(rows)
        if not kept:
            raise CtxlabError(f"{name}: no training row fits seq_len {cfg.seq_len}")
        path = data / f"{name}.jsonl"
        write_jsonl_atomic(path, kept)
        searched.update(check_disjoint(eval_ctx, [path]))
        _log(f"{name}: {len(kept)} rows ({skipped[name]} longer than {cfg.seq_len} tokens skipped)")
        return _train("sft", name, cfg, base, {"seq_len": cfg.seq_len, "heldout": cfg.heldout, "jsonl": str(path),
                                               "prompt_weight": 0.0}, steps, runs)

    # 4. generator; 5. QA on English gold
    t0 = time.perf_counter()
    generator = sft("generator", generator_rows(split["generator"]), cfg.generator_steps)
    tick("generator", t0)
    t0 = time.perf_counter()
    gold_en = qa_rows(split["generator"]["en"] + split["qa"]["en"], "en", "gold")
    qa_base = sft("qa_base", gold_en, cfg.qa_steps)
    tick("qa_base", t0)

    # 6. synthetic QA on the qa-split contexts, every language
    t0 = time.perf_counter()
    contexts = [Context(f"{lang}-{a.title}-p{pi}", p.context, lang, a.title)
                for lang in cfg.langs for a in split["qa"][lang] for pi, p in enumerate(a.paragraphs)]
    gen_lm = TextModel.load(generator, batch_size=cfg.infer_batch_size)
    sample = make_generate(gen_lm, max_new_tokens=cfg.gen_max_new_tokens, temperature=cfg.temperature,
                           top_p=cfg.top_p, seed=cfg.seed)
    raw: list[str] = []  # every generation, in prompt order (contexts × per_context), for inspection

    def generate(prompts: list[str]) -> list[str]:
        outs = sample(prompts)
        raw.extend(outs)
        return outs

    answer = (make_answer(TextModel.load(qa_base, batch_size=cfg.infer_batch_size),
                          max_new_tokens=cfg.qa_max_new_tokens) if cfg.roundtrip else None)
    squad, synth_stats = run_synth_qa(generate, answer, contexts, cfg.per_context,
                                      min_roundtrip_f1=cfg.min_roundtrip_f1, batch_size=cfg.infer_batch_size)
    synth_path, _ = save_synth_qa(squad, synth_stats, data / "synthetic.json")
    write_jsonl_atomic(data / "synthetic.raw.jsonl", ({"context_id": contexts[k // cfg.per_context].id, "generation": g}
                                                for k, g in enumerate(raw)))
    searched.update(check_disjoint(eval_ctx, [synth_path]))
    _log("synthetic QA:\n" + format_stats(synth_stats))
    tick("synth", t0)

    # 7. QA on English gold + synthetic data (same start, steps and seed as qa_base)
    t0 = time.perf_counter()
    ctx_lang = {c.id: c.lang for c in contexts}  # question ids are "<context id>-q<k>"
    synth_rows = [row for art in load_squad(synth_path)
                  for row in qa_rows([art], ctx_lang[art.paragraphs[0].qas[0].id.rsplit("-q", 1)[0]], "synthetic")]
    qa_aug = sft("qa_aug", gold_en + synth_rows, cfg.qa_steps)
    tick("qa_aug", t0)

    _log(f"leak check: none of {len(set(eval_ctx))} eval contexts occurs in {len(searched)} training files")

    # 8. evaluation and report
    t0 = time.perf_counter()
    ev = evaluate_models({"qa_base": qa_base, "qa_aug": qa_aug}, split["eval"], cfg)
    write_jsonl_atomic(out / "predictions.jsonl", ev.predictions)
    rows_f1 = gain_rows(ev, "mlqa_f1", cfg.n_boot, cfg.seed)
    rows_em = gain_rows(ev, "mlqa_em", cfg.n_boot, cfg.seed)
    table_f1 = format_gain_table(rows_f1, metric="F1")
    table_em = format_gain_table(rows_em, metric="EM")
    plot_gains(rows_f1, out / "gain_f1.png", metric="F1 (MLQA norm.)",
               title="XQuAD eval split: gold en + synthetic vs gold en")
    tick("eval", t0)
    timings["total"] = round(time.perf_counter() - t_start, 1)

    results = {
        "config": asdict(cfg), "timings_s": timings, "split": manifest, "threads": torch.get_num_threads(),
        "load_avg": [load_start, os.getloadavg()[0]],
        "train_rows": {name: sum(1 for _ in open(data / f"{name}.jsonl", encoding="utf-8"))
                       for name in ("generator", "qa_base", "qa_aug")},
        "skipped_long_rows": skipped, "synthetic_stats": synth_stats,
        "synthetic_questions": sum(s["kept"] for s in synth_stats.values()),
        "leak_check": {"eval_contexts": len(set(eval_ctx)), "files": searched},
        "gain_f1": [_row(r) for r in rows_f1], "gain_em": [_row(r) for r in rows_em],
        "official_squad_f1": {m: {lang: _mean(v, "f1") for lang, v in ev.scores[m].items()} for m in ev.scores},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    md = render_markdown(cfg, results, table_f1, table_em, format_stats(synth_stats))
    (out / "results.md").write_text(md)
    _log(f"finished in {timings['total']:.0f}s; table in {out / 'results.md'}, plot in {out / 'gain_f1.png'}\n"
         + table_f1)
    return results


def _mean(v: Sequence[Mapping[str, float]], key: str) -> float:
    return sum(x[key] for x in v) / max(1, len(v))


def _row(r: GainRow) -> dict[str, Any]:
    return {"lang": r.lang, "n": r.n, "baseline": r.baseline, "system": r.system, **asdict(r.ci)}


def render_markdown(cfg: ExperimentConfig, res: Mapping[str, Any], table_f1: str, table_em: str, stats: str) -> str:
    t = res["timings_s"]
    n_params = _count_params(Path(cfg.out_dir) / "init")
    return "\n".join([
        "# Synthetic multilingual QA: gold English vs gold English + synthetic",
        "",
        f"Model: Qwen3 architecture from scratch, hidden {cfg.hidden}, {cfg.layers} layers, "
        f"{n_params / 1e6:.2f}M parameters, {cfg.vocab_size}-token BPE on train-split contexts. "
        f"Steps: pretrain {cfg.pretrain_steps}, generator {cfg.generator_steps}, QA {cfg.qa_steps} (each), "
        f"batch {cfg.batch_size}. Split (articles): "
        + ", ".join(f"{k} {len(v)}" for k, v in res["split"].items()) + f"; languages {', '.join(cfg.langs)}.",
        f"Synthetic data: {cfg.per_context} sample(s) per context at temperature {cfg.temperature:g}, top-p "
        f"{cfg.top_p:g}; round trip " + (f"with qa_base at F1 >= {cfg.min_roundtrip_f1:g}" if cfg.roundtrip else "off")
        + f". Eval: {'all' if not cfg.max_eval_questions else f'the first {cfg.max_eval_questions}'} questions per "
        "language of the eval split (parallel across languages).",
        f"Training rows: {res['train_rows']}; synthetic questions kept: {res['synthetic_questions']}.",
        f"Wall time: {t['total']:.0f} s ({', '.join(f'{k} {v:.0f}s' for k, v in t.items() if k != 'total')}); "
        f"{res['threads']} torch threads; 1-min load average at start / end: {res['load_avg'][0]:.1f} / "
        f"{res['load_avg'][1]:.1f}.",
        "",
        "## Synthetic data (qa-split contexts)",
        "",
        "```", stats, "```",
        "",
        "## F1 (MLQA normalisation), eval split, paired bootstrap", "", table_f1,
        "", "## EM (MLQA normalisation)", "", table_em, "",
    ])


def _count_params(ckpt: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(ckpt / "model.safetensors")).values())


def make_config(out_dir: str, *, tiny: bool = False, **overrides: Any) -> ExperimentConfig:
    """The DEFAULT or TINY preset with `overrides` (None values ignored)."""
    kw = {**(TINY if tiny else DEFAULT), **{k: v for k, v in overrides.items() if v is not None}}
    return replace(ExperimentConfig(out_dir=out_dir), **kw)


__all__ = ["DEFAULT", "STAGES", "TINY", "EvalOutput", "ExperimentConfig", "check_disjoint", "evaluate_models",
           "generator_rows", "load_split", "make_config", "qa_rows", "run_experiment"]

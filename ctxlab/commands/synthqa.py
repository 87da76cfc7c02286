"""`ctxlab synth-qa MODEL --contexts ... --out FILE.json`: synthetic question-answer pairs, filtered
(ctxlab/apps/synthqa/run.py); `ctxlab synth-qa-experiment --out DIR`: the multilingual experiment end to end."""

from __future__ import annotations

from typing import Annotated

import typer

from ctxlab.commands.common import DeviceOpt, DtypeOpt, ModelArg, split_names


def run(
    model: ModelArg,
    contexts: Annotated[str, typer.Option(help="xquad:LANG[:generator|qa|eval], or a .txt/.jsonl/.json file")],
    out: Annotated[str, typer.Option(help="output SQuAD v1.1 JSON (+ OUT.stats.json)")],
    per_context: Annotated[int, typer.Option(help="candidates per context (> 1 samples)")] = 1,
    min_roundtrip_f1: Annotated[float | None, typer.Option(help="keep pairs the QA model answers with F1 >= X "
                                                                "(default 0.5)")] = None,
    roundtrip: Annotated[bool, typer.Option("--roundtrip/--no-roundtrip", help="filter with a QA model")] = True,
    qa_model: Annotated[str | None, typer.Option(help="round-trip QA checkpoint (default: MODEL)")] = None,
    temperature: Annotated[float | None, typer.Option(help="default 0 (greedy), 1.0 when --per-context > 1")] = None,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (1 = off)")] = 1.0,
    seed: int = 0,
    lang: Annotated[str | None, typer.Option(help="language of file contexts whose rows don't say")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="generator tokens per candidate")] = 64,
    qa_max_new_tokens: Annotated[int, typer.Option(help="round-trip answer tokens")] = 32,
    batch_size: Annotated[int, typer.Option(help="prompts per engine batch")] = 16,
    data_dir: Annotated[str | None, typer.Option(help="directory holding xquad.LANG.json")] = None,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Generate synthetic question-answer pairs for CONTEXTS with MODEL, filter them, write SQuAD JSON."""
    from ctxlab.apps.synthqa.run import synth_qa

    synth_qa(model, contexts, out, per_context=per_context, min_roundtrip_f1=min_roundtrip_f1, roundtrip=roundtrip,
             qa_model=qa_model, temperature=temperature, top_p=top_p, seed=seed, lang=lang,
             max_new_tokens=max_new_tokens, qa_max_new_tokens=qa_max_new_tokens, batch_size=batch_size,
             data_dir=data_dir, dtype=dtype, device=device)


def experiment(
    out: Annotated[str, typer.Option(help="output directory (new or empty)")],
    tiny: Annotated[bool, typer.Option(help="3 languages, 8 articles, a few steps (tests)")] = False,
    data_dir: Annotated[str | None, typer.Option(help="directory holding xquad.LANG.json (default: the shared "
                                                      "XQuAD data)")] = None,
    langs: Annotated[str | None, typer.Option(help="comma-separated languages (must include en)")] = None,
    max_articles: Annotated[int | None, typer.Option(help="first N parallel articles (0 = all)")] = None,
    pretrain_steps: int | None = None,
    generator_steps: int | None = None,
    qa_steps: int | None = None,
    batch_size: int | None = None,
    per_context: int | None = None,
    temperature: float | None = None,
    min_roundtrip_f1: float | None = None,
    roundtrip: Annotated[bool | None, typer.Option("--roundtrip/--no-roundtrip", help="filter synthetic pairs by "
                                                   "the round trip through the English-gold QA model")] = None,
    hidden: int | None = None,
    layers: int | None = None,
    seq_len: Annotated[int | None, typer.Option(help="longest SFT row in tokens (longer rows are skipped)")] = None,
    max_eval_questions: Annotated[int | None, typer.Option(help="per language (0 = whole eval split)")] = None,
    threads: int | None = None,
    seed: int | None = None,
) -> None:
    """The synthetic multilingual QA experiment end to end: generator + QA training, per-language gains."""
    from ctxlab.apps.synthqa.experiment import make_config, run_experiment
    from ctxlab.fileio import check_writable_dir

    check_writable_dir(out, "--out")
    cfg = make_config(
        out, tiny=tiny, data_dir=data_dir, langs=split_names(langs) or None, max_articles=max_articles,
        pretrain_steps=pretrain_steps, generator_steps=generator_steps, qa_steps=qa_steps, batch_size=batch_size,
        per_context=per_context, temperature=temperature, min_roundtrip_f1=min_roundtrip_f1, roundtrip=roundtrip,
        threads=threads, hidden=hidden, layers=layers, seq_len=seq_len, max_eval_questions=max_eval_questions,
        seed=seed,
    )
    run_experiment(cfg)

"""Synthetic multilingual QA experiment end to end (see ctxlab/apps/synthqa/experiment.py).

    .venv/bin/python scripts/synthqa_experiment.py --out runs/synthqa            # default: <= 25 min, 2 CPU cores
    .venv/bin/python scripts/synthqa_experiment.py --out /tmp/sq-tiny --tiny     # < 1 min smoke run
"""

from __future__ import annotations

import argparse
import sys

from ctxlab.apps.synthqa.experiment import make_config, run_experiment
from ctxlab.errors import CtxlabError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="synthqa_experiment", description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (new or empty)")
    ap.add_argument("--tiny", action="store_true", help="3 languages, 8 articles, a few steps (tests)")
    ap.add_argument("--data-dir", help="directory holding xquad.LANG.json (default: the shared XQuAD data)")
    ap.add_argument("--langs", help="comma-separated languages (must include en)")
    ap.add_argument("--max-articles", type=int, help="first N parallel articles (0 = all)")
    ap.add_argument("--pretrain-steps", type=int)
    ap.add_argument("--generator-steps", type=int)
    ap.add_argument("--qa-steps", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--per-context", type=int)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--min-roundtrip-f1", type=float)
    ap.add_argument("--roundtrip", action=argparse.BooleanOptionalAction, default=None,
                    help="filter synthetic pairs by the round trip through the English-gold QA model")
    ap.add_argument("--hidden", type=int)
    ap.add_argument("--layers", type=int)
    ap.add_argument("--seq-len", type=int, help="longest SFT row in tokens (longer rows are skipped)")
    ap.add_argument("--max-eval-questions", type=int, help="per language (0 = whole eval split)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    try:
        cfg = make_config(
            a.out, tiny=a.tiny, data_dir=a.data_dir,
            langs=tuple(x.strip() for x in a.langs.split(",") if x.strip()) if a.langs else None,
            max_articles=a.max_articles, pretrain_steps=a.pretrain_steps, generator_steps=a.generator_steps,
            qa_steps=a.qa_steps, batch_size=a.batch_size, per_context=a.per_context, temperature=a.temperature,
            min_roundtrip_f1=a.min_roundtrip_f1, roundtrip=a.roundtrip, threads=a.threads, hidden=a.hidden,
            layers=a.layers, seq_len=a.seq_len, max_eval_questions=a.max_eval_questions, seed=a.seed,
        )
        run_experiment(cfg)
    except CtxlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

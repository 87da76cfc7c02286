"""python -m ctxlab.train pretrain|sft|dpo --config FILE [--resume] (until the `ctxlab train` command is wired)."""

import argparse
import sys

from ctxlab.errors import CtxlabError
from ctxlab.train.cli import train_cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ctxlab.train")
    ap.add_argument("kind", choices=["pretrain", "sft", "dpo"])
    ap.add_argument("--config", required=True)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)
    try:
        train_cli(args.kind, args.config, args.resume)
    except CtxlabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

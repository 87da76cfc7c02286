"""The `ctxlab` command: typed functions turned into subcommands with typer.

Every command validates its options before loading a model; user errors (CtxlabError) become one line on stderr
and exit status 2, never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ctxlab.errors import CtxlabError

app = typer.Typer(
    name="ctxlab",
    help="A fast, hackable PyTorch lab for open LLMs and long contexts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ModelArg = Annotated[str, typer.Argument(help="checkpoint directory or hub id (e.g. Qwen/Qwen3-0.6B)")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32 (CPU default), bfloat16, float16")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda[:N]")]


@app.command()
def info(
    model: ModelArg,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Family, shape, parameters, context length, licence and dtype of a checkpoint (reads no weights)."""
    from ctxlab.modelinfo import model_info

    facts = model_info(model)
    if as_json:
        print(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        print(f"{key:>22}: {value}")


@app.command()
def generate(
    model: ModelArg,
    prompt: Annotated[str, typer.Option(help="the prompt text (use @FILE to read it from a file)")],
    chat: Annotated[bool, typer.Option(help="wrap the prompt in the model's chat template")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option(help="0 = off")] = 0,
    top_p: Annotated[float, typer.Option(help="nucleus sampling mass (1 = off)")] = 1.0,
    seed: int = 0,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    truncate: Annotated[bool, typer.Option(help="left-truncate a prompt that exceeds the context")] = False,
    dtype: DtypeOpt = None,
    device: DeviceOpt = "cpu",
) -> None:
    """Stream a completion of PROMPT to stdout."""
    from ctxlab.engine.sampling import SamplingParams
    from ctxlab.generation import stream_text

    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
    )
    text = Path(prompt[1:]).read_text() if prompt.startswith("@") else prompt
    stats = stream_text(model, text, params, chat=chat, stop=stop or [], truncate=truncate, dtype=dtype,
                        device=device, out=sys.stdout)
    print(file=sys.stdout, flush=True)
    print(stats, file=sys.stderr)


def main() -> None:
    """Console entry point: one-line errors and a non-zero exit for bad input."""
    try:
        app(standalone_mode=False)
    except CtxlabError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (typer.Abort, typer.Exit) as e:  # typer's own exits
        sys.exit(getattr(e, "exit_code", 1))
    except Exception as e:  # click usage errors and friends
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()

"""The `ctxlab` command: each subcommand is a typed function `run` in ctxlab/commands/<name>.py (its options are
defined once, there), wired here.

Every command validates its options before loading a model; user errors (CtxlabError) become one line on stderr
and exit status 2, never a traceback. Command modules import only typer at module level, so `ctxlab --help` and
usage errors stay fast.
"""

from __future__ import annotations

import sys

import typer

from ctxlab.commands import (
    card,
    chat,
    convert,
    demo,
    generate,
    info,
    report,
    serve,
    synthqa,
    tasks,
    tickets,
    train,
    ttt,
)
from ctxlab.commands import eval as evaluate
from ctxlab.errors import CtxlabError

app = typer.Typer(
    name="ctxlab",
    help="A fast, hackable PyTorch lab for open LLMs and long contexts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("info")(info.run)
app.command("convert")(convert.run)
app.command("generate")(generate.run)
app.command("ttt")(ttt.run)
app.command("train")(train.run)
app.command("eval")(evaluate.run)
app.command("tasks")(tasks.run)
app.command("report")(report.run)
app.command("card")(card.run)
app.command("chat")(chat.run)
app.command("serve")(serve.run)
app.command("synth-qa")(synthqa.run)
app.command("synth-qa-experiment")(synthqa.experiment)
app.command("demo")(demo.run)
app.add_typer(tickets.app, name="tickets")


def _click_errors() -> tuple[type[Exception], ...]:
    """click's exception base classes: the standalone package's and the copy typer vendors (typer >= 0.25 raises
    its own), so usage errors are caught whichever typer is installed."""
    import click

    classes: list[type[Exception]] = [click.ClickException]
    try:
        from typer._click import exceptions as vendored
    except ImportError:
        pass
    else:
        classes.append(vendored.ClickException)
    return tuple(classes)


def usage_line(e: Exception) -> str:
    """One line for a click/typer usage error, pointing at the command's --help."""
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = e.format_message() if hasattr(e, "format_message") else str(e)
    return f"error: {message}{hint}"


def main() -> None:
    """Console entry point: one line on stderr and a non-zero exit for bad input (2 for usage and input errors)."""
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
    except _click_errors() as e:  # usage errors: missing/unknown option or command, bad value, range
        if str(e).strip():  # (a bare group has printed its help: nothing to add)
            print(" ".join(usage_line(e).split()), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

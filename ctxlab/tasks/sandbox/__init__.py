"""Deterministic long-context sandbox tasks (qTTT paper App. A plus a key-value control).

- `bank`: find the one anomalous transaction in a bank ledger → `NEGATIVE_BAL TX0042`.
- `code`: find the one injected bug in line-numbered stdlib excerpts → `json/decoder.py:123`.
- `kv`: return the value of a key among look-alike keys → `482913`.

Each `generate_*(seed, n_tokens, *, count_tokens=...)` returns a `SandboxExample` whose no-thinking prompt is within
5% of `n_tokens`; `render_prompt`/`render_target` give the training/demo format (answer after `Final:`), `score_*`
parse free text leniently. `TASKS` are the eval-harness adapters `sandbox:bank|code|kv`.
"""

from ctxlab.tasks.format import FINAL_MARKER, format_prompt
from ctxlab.tasks.sandbox.bank import check_log
from ctxlab.tasks.sandbox.bank import generate as generate_bank
from ctxlab.tasks.sandbox.bank import parse_answer as parse_bank
from ctxlab.tasks.sandbox.bank import score as score_bank
from ctxlab.tasks.sandbox.code import generate as generate_code
from ctxlab.tasks.sandbox.code import parse_answer as parse_code
from ctxlab.tasks.sandbox.code import score as score_code
from ctxlab.tasks.sandbox.common import SandboxExample, render_prompt, render_target
from ctxlab.tasks.sandbox.kv import generate as generate_kv
from ctxlab.tasks.sandbox.kv import parse_answer as parse_kv
from ctxlab.tasks.sandbox.kv import score as score_kv
from ctxlab.tasks.sandbox.tasks import (
    GENERATORS,
    PARSERS,
    TASKS,
    SandboxTask,
    chance_level,
    example_near,
    make_task,
)
from ctxlab.tasks.truncation import approx_count_tokens

SCORERS = {"bank": score_bank, "code": score_code, "kv": score_kv}

__all__ = [
    "FINAL_MARKER", "GENERATORS", "PARSERS", "SCORERS", "TASKS", "SandboxExample", "SandboxTask",
    "approx_count_tokens", "chance_level", "check_log", "example_near", "format_prompt", "generate_bank",
    "generate_code", "generate_kv", "make_task", "parse_bank", "parse_code", "parse_kv", "render_prompt",
    "render_target", "score_bank", "score_code", "score_kv",
]

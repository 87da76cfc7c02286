"""Bug localisation in code (qTTT paper App. A, "Bug localization in a code repository"), over the Python standard
library sources that ship with the interpreter.

One single-line logical bug is injected into one module from a fixed, sorted list of pure-Python modules present
on Python 3.10-3.13 (MODULES). Mutation kinds (MUTATIONS) are found with `tokenize`, so strings, comments and
docstrings are never touched, and the mutated file must still compile. The context shows line-numbered excerpts:
first the bug's file around the bug (the bug sits at a seeded relative position inside that window), then excerpts
of other modules in a seeded order. The question describes the bug in natural language (its kind and, by default,
the enclosing function). The answer is `path:line`, the path relative to the stdlib directory and the original line
number, e.g. `json/decoder.py:123`.

Length = number of exposed lines (as in the paper): half of them go to the bug's file (at least 5), the rest to other
files, each new line extending the last excerpt or opening the next one; larger lengths therefore show supersets
of smaller ones. The bug (file, line, mutation) comes from its own random stream, so it is identical at every length.
Note: the stdlib text differs between Python versions, so examples are reproducible per interpreter version
(recorded in meta["python"]), not across versions.
"""

from __future__ import annotations

import ast
import io
import keyword
import re
import sys
import sysconfig
import tokenize
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from random import Random

from ctxlab.errors import CtxlabError
from ctxlab.tasks.format import answer_region
from ctxlab.tasks.sandbox.common import (
    TOLERANCE,
    SandboxExample,
    check_seed,
    check_target,
    fit_length,
)
from ctxlab.tasks.truncation import approx_count_tokens

# Pure-Python modules that exist on CPython 3.10-3.13 and hold plenty of logic (sorted; never reorder or edit
# without bumping the task version: the seed → example mapping depends on this list).
MODULES = (
    "base64.py", "bisect.py", "calendar.py", "colorsys.py", "configparser.py", "csv.py", "difflib.py",
    "email/_parseaddr.py", "email/quoprimime.py", "fnmatch.py", "fractions.py", "ftplib.py", "genericpath.py",
    "gettext.py", "glob.py", "gzip.py", "heapq.py", "hmac.py", "html/parser.py", "ipaddress.py", "json/decoder.py",
    "json/encoder.py", "netrc.py", "ntpath.py", "numbers.py", "operator.py", "plistlib.py", "posixpath.py",
    "pprint.py", "quopri.py", "random.py", "reprlib.py", "sched.py", "shlex.py", "statistics.py", "string.py",
    "textwrap.py", "tokenize.py", "urllib/parse.py", "uuid.py", "wave.py",
)
MUTATIONS = {
    "comparison": "a comparison operator was changed (< and <=, or > and >=, swapped)",
    "equality": "an equality test was inverted (== and != swapped)",
    "arithmetic": "an addition and a subtraction were swapped (+ and -)",
    "boolean": "a boolean operator was swapped (and and or)",
    "constant": "a boolean constant was flipped (True and False)",
    "off_by_one": "an index, slice or range bound is off by one",
    "negated_return": "a return statement now returns the logical negation of its value",
    "dropped_not": "a `not` was removed from an expression",
}
KINDS = tuple(MUTATIONS)
HINTS = ("function", "kind")  # how much the bug description says: kind + enclosing function, or kind only
CHUNK = 120  # lines per excerpt of another file
MIN_BUG_WINDOW = 5
_SWAPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==", "+": "-", "-": "+", "+=": "-=",
          "-=": "+=", "and": "or", "or": "and", "True": "False", "False": "True"}
_SWAP_KIND = {"<": "comparison", "<=": "comparison", ">": "comparison", ">=": "comparison", "==": "equality",
              "!=": "equality", "+": "arithmetic", "-": "arithmetic", "+=": "arithmetic", "-=": "arithmetic",
              "and": "boolean", "or": "boolean", "True": "constant", "False": "constant"}
_SKIP = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # 3.12+: f-string parts are tokenized; we skip them
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)


@dataclass(frozen=True)
class Mutation:
    line: int  # 1-based line number in the original file
    col: int  # line[col:end] is replaced by `new`
    end: int
    new: str
    kind: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


@cache
def available_modules() -> tuple[str, ...]:
    root = stdlib_root()
    found = tuple(m for m in MODULES if (root / m).is_file())
    if len(found) < 5:
        raise CtxlabError(f"Python standard library sources not found under {root}; the code task needs them")
    return found


@cache
def source_lines(path: str) -> tuple[str, ...]:
    """The file's lines as tokenize numbers them (split on '\\n' only; form feeds are not line breaks)."""
    text = (stdlib_root() / path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline does not start a line
    return tuple(line.rstrip("\r") for line in lines)


def _excluded_lines(tree: ast.Module) -> set[int]:
    """Lines of `if __name__ == "__main__":` blocks and module-level test/main helpers (not library logic)."""
    out: set[int] = set()
    for node in tree.body:
        is_main = isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
        is_helper = isinstance(node, ast.FunctionDef) and node.name in ("test", "_test", "main", "_main")
        if is_main or is_helper:
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return out


@cache
def _scopes(path: str) -> tuple[tuple[int, int, str], ...]:
    """(first line, last line, qualname) of every function and class."""
    out: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                out.append((child.lineno, child.end_lineno or child.lineno, name))
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse("\n".join(source_lines(path))), "")
    return tuple(out)


def enclosing_scope(path: str, line: int) -> str:
    """Qualified name of the innermost function/class containing `line` ("" at module level)."""
    best = max((s for s in _scopes(path) if s[0] <= line <= s[1]), default=None, key=lambda s: s[0])
    return best[2] if best else ""


@cache
def candidates(path: str) -> tuple[Mutation, ...]:
    """Every single-token mutation site of a module (in code tokens only)."""
    src = "\n".join(source_lines(path))
    try:
        toks = [t for t in tokenize.generate_tokens(io.StringIO(src).readline) if t.type not in _SKIP]
        excluded = _excluded_lines(ast.parse(src))
    except (tokenize.TokenError, SyntaxError):
        return ()
    out: list[Mutation] = []
    brackets: list[tuple[str, tokenize.TokenInfo | None]] = []  # (opening bracket, token before it)
    fstring = 0
    for i, t in enumerate(toks):
        prev = toks[i - 1] if i else None
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t.type == _FSTRING_START:
            fstring += 1
        elif t.type == _FSTRING_END:
            fstring -= 1
        if t.type == tokenize.OP and t.string in "([{":
            brackets.append((t.string, prev))
        elif t.type == tokenize.OP and t.string in ")]}" and brackets:
            brackets.pop()
        if fstring or t.start[0] != t.end[0] or t.start[0] in excluded:
            continue
        row, col, end = t.start[0], t.start[1], t.end[1]
        if t.string in _SWAPS and t.type in (tokenize.OP, tokenize.NAME):
            if t.string in ("+", "-") and not _is_operand_end(prev):
                continue  # unary sign, not a binary operator
            out.append(Mutation(row, col, end, _SWAPS[t.string], _SWAP_KIND[t.string]))
        elif t.type == tokenize.NUMBER and t.string in ("0", "1", "2") and brackets and _index_or_range(brackets[-1]):
            value = int(t.string)
            out += [Mutation(row, col, end, str(v), "off_by_one") for v in (value - 1, value + 1) if v >= 0]
        elif t.type == tokenize.NAME and t.string == "return" and nxt is not None and nxt.start[0] == row:
            if nxt.type not in (tokenize.NEWLINE, tokenize.COMMENT) and nxt.string not in (";", "not", "yield"):
                out.append(Mutation(row, nxt.start[1], nxt.start[1], "not ", "negated_return"))
        elif t.type == tokenize.NAME and t.string == "not" and nxt is not None and nxt.start[0] == row:
            if (prev is None or prev.string != "is") and nxt.string != "in":
                out.append(Mutation(row, col, nxt.start[1], "", "dropped_not"))
    return tuple(out)


def _is_operand_end(tok: tokenize.TokenInfo | None) -> bool:
    if tok is None:
        return False
    if tok.type == tokenize.NAME:
        return tok.string in ("True", "False", "None") or not keyword.iskeyword(tok.string)
    return tok.type in (tokenize.NUMBER, tokenize.STRING) or tok.string in (")", "]", "}")


def _index_or_range(bracket: tuple[str, tokenize.TokenInfo | None]) -> bool:
    """Inside a subscript `x[...]` or a `range(...)` call."""
    char, before = bracket
    if char == "[":
        return _is_operand_end(before) and before is not None and before.type != tokenize.NUMBER
    return char == "(" and before is not None and before.string == "range"


def apply(path: str, m: Mutation) -> str:
    """The mutated text of line `m.line`."""
    line = source_lines(path)[m.line - 1]
    return line[: m.col] + m.new + line[m.end :]


def compiles_after(path: str, m: Mutation) -> bool:
    lines = list(source_lines(path))
    lines[m.line - 1] = apply(path, m)
    try:
        compile("\n".join(lines), path, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class Bug:
    path: str
    mutation: Mutation
    original: str
    mutated: str
    scope: str


def choose_bug(seed: int, kind: str) -> Bug:
    """The bug for a seed: a random module having `kind` sites, a random site, redrawn until the file compiles."""
    rng = Random(f"code:{seed}:needle")
    files = [p for p in available_modules() if any(c.kind == kind for c in candidates(p))]
    if not files:
        raise CtxlabError(f"no mutation sites of kind {kind!r} in the standard library sources")
    for _ in range(100):
        path = rng.choice(files)
        m = rng.choice([c for c in candidates(path) if c.kind == kind])
        if compiles_after(path, m):
            return Bug(path, m, source_lines(path)[m.line - 1], apply(path, m), enclosing_scope(path, m.line))
    raise AssertionError("no compilable mutation found")  # practically unreachable


def _window(n_lines: int, line: int, w: int, frac: float) -> tuple[int, int]:
    """Lines [start, end] (1-based, inclusive) of a w-line window with `line` at relative position `frac` (so the
    bug is not simply the middle line), shifted inside the file; windows are nested as w grows."""
    start = max(1, line - round(frac * (w - 1)))
    end = min(n_lines, start + w - 1)
    return max(1, end - w + 1), end


def _header(path: str, start: int, end: int) -> str:
    return f"--- {path}, lines {start}-{end} ---"


def generate(
    seed: int,
    n_tokens: int = 1024,
    *,
    count_tokens: Callable[[str], int] = approx_count_tokens,
    kind: str | None = None,
    hint: str = "function",
    tolerance: float | None = TOLERANCE,
) -> SandboxExample:
    """Line-numbered stdlib excerpts with one injected bug; the no-thinking prompt has `n_tokens` ± 5% tokens.

    The mutation kind cycles with the seed (KINDS[seed % 8]) unless `kind` is given. `hint` is "function" (bug
    kind and enclosing function in the question) or "kind" (bug kind only).
    """
    check_seed(seed)
    check_target(n_tokens)
    kind = KINDS[seed % len(KINDS)] if kind is None else kind
    if kind not in MUTATIONS:
        raise CtxlabError(f"unknown mutation kind {kind!r}; valid: {', '.join(KINDS)}")
    if hint not in HINTS:
        raise CtxlabError(f"unknown hint level {hint!r}; valid: {', '.join(HINTS)}")
    bug = choose_bug(seed, kind)
    line = bug.mutation.line
    frac = Random(f"code:{seed}:offset").uniform(0.1, 0.9)  # where the bug sits inside its file's window
    others = [p for p in available_modules() if p != bug.path]
    hay = Random(f"code:{seed}:hay")
    hay.shuffle(others)
    excerpts = []  # (path, start, max_len) of the other files, in order
    for p in others:
        n = len(source_lines(p))
        start = hay.randint(1, max(1, n - CHUNK + 1))
        excerpts.append((p, start, min(CHUNK, n - start + 1)))
    n_bug_file = len(source_lines(bug.path))
    where = (f" in `{bug.scope}`" if bug.scope else " at module level") if hint == "function" else ""
    description = f"{MUTATIONS[kind]}{where}"
    question = (f"One single-line logical bug was injected into the code above: {description}. Which line has the "
                f"bug? Answer with path:line, e.g. dir/file.py:123.")
    answer = f"{bug.path}:{line}"
    bug_line_text = f"{line}| {bug.mutated}".rstrip()

    def build(n: int, k: int) -> SandboxExample:
        w = min(n_bug_file, max(min(n + 1, MIN_BUG_WINDOW), (n + 2) // 2))
        rest = n + 1 - w  # n + 1 lines in all: the bug line is always shown
        start, end = _window(n_bug_file, line, w, frac)
        parts = [(bug.path, start, end)]
        for p, s, size in excerpts:
            if rest <= 0:
                break
            take = min(size, rest)
            parts.append((p, s, s + take - 1))
            rest -= take
        out = ["Excerpts from the Python standard library, with line numbers."]
        pos = len(out[0]) + 1
        span = (0, 0)
        for p, s, e in parts:
            out.append(_header(p, s, e))
            pos += len(out[-1]) + 1
            src = source_lines(p)
            for no in range(s, e + 1):
                text = bug_line_text if (p == bug.path and no == line) else f"{no}| {src[no - 1]}".rstrip()
                if p == bug.path and no == line:
                    span = (pos, pos + len(text))
                out.append(text)
                pos += len(text) + 1
        context = "\n".join(out)
        return SandboxExample(
            task="code",
            context=context,
            question=question,
            answer=answer,
            evidence=(span,),
            scratchpad=(f"The description says {description}. In {bug.path}, line {line} reads "
                        f"`{bug.mutated.strip()}` but should read `{bug.original.strip()}`. "
                        f"So the bug is at {answer}."),
            meta={"seed": seed, "path": bug.path, "line": line, "kind": kind, "scope": bug.scope,
                  "original": bug.original, "mutated": bug.mutated, "n_lines": n + 1, "n_files": len(parts),
                  "hint": hint, "python": f"{sys.version_info[0]}.{sys.version_info[1]}"},
        )

    n_max = n_bug_file + sum(size for _, _, size in excerpts) - 1
    return fit_length(build, count_tokens, n_tokens, n_max=n_max, what="code excerpt", tolerance=tolerance)


_LINE_RE = re.compile(r"^(\d+)\| ?(.*)$")
_HEADER_RE = re.compile(r"^--- (.+), lines (\d+)-(\d+) ---$")


def parse_excerpts(context: str) -> list[tuple[str, int, str]]:
    """(path, line number, code text) of every shown line (tests use it to diff the context against the sources)."""
    out: list[tuple[str, int, str]] = []
    path = None
    for raw in context.split("\n"):
        if m := _HEADER_RE.match(raw):
            path = m.group(1)
        elif path is not None and (m := _LINE_RE.match(raw)):
            out.append((path, int(m.group(1)), m.group(2)))
    return out


_ANS_RE = re.compile(r"([A-Za-z0-9_./\\-]*[A-Za-z0-9_]\.py)\s*[:#,]?\s*(?:line\s*|L)?(\d+)", re.I)
_PREFIX_RE = re.compile(r"^(?:.*?[/\\])?(?:Lib|lib[/\\]python3\.\d+)[/\\]")


def parse_answer(text: str) -> str | None:
    """Canonical `path:line` from free text: first match after the last `Final:`, else the last match."""
    region, marked = answer_region(text)
    hits = list(_ANS_RE.finditer(region))
    if not hits:
        return None
    m = hits[0] if marked else hits[-1]
    path = _PREFIX_RE.sub("", m.group(1).replace("\\", "/"))
    while path.startswith("./"):
        path = path[2:]
    return f"{path}:{int(m.group(2))}"


def score(prediction_text: str, example: SandboxExample) -> bool:
    return parse_answer(prediction_text) == example.answer

"""Bank transaction-log anomaly detection (qTTT paper App. A, "Error in a transaction log").

A ledger has a few accounts with initial balances, then operations in time order, one per line:

    TX4821 transfer A2 -> A5 amount 120: A2 530 -> 410, A5 75 -> 195
    TX1093 deposit A3 amount 50: A3 200 -> 250 (memo: rent)

Rules (invariants): a line's old balance equals the account's balance after its previous operation; new = old + amount
for deposits and transfer receivers and old - amount for withdrawals and transfer senders (so transfers conserve
money); no balance becomes negative; every TX id is executed once. Exactly one anomaly is injected:

- CALC_ERROR: one recorded new balance is not old ± amount (the log then continues from the recorded value).
- NEGATIVE_BAL: a withdrawal/transfer larger than the balance; arithmetic is right but the new balance is < 0.
- LOST_UPDATE: an operation on account X records as its old balance the value X had *before* X's previous update
  (a stale read), with arithmetic right relative to that stale value; the answer is this stale write's TX id.
- DUPLICATE_TXN: an earlier transfer is replayed later with the *same* TX id, accounts and amount (balances applied
  correctly to the then-current state); the answer is that TX id.

The answer is rendered `BUG_TYPE TXnnnn`, e.g. `NEGATIVE_BAL TX0042`. TX ids are random unique 4-digit numbers, so
the answer cannot be read off the position; all amounts are <= 400, so the anomaly is not the largest amount either.
The needle (the anomalous line(s), for LOST_UPDATE / DUPLICATE_TXN with at most one line between them) is
drawn from its own random stream and the account state right before it is fixed: the operations before the needle
are generated *backwards* from that state (the initial balances follow from them), those after it forwards. So the
needle text is identical at every length; only the haystack (number of operations) grows, at both ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from random import Random

from ctxlab.errors import CtxlabError
from ctxlab.tasks.format import answer_region
from ctxlab.tasks.sandbox.common import (
    TOLERANCE,
    SandboxExample,
    check_seed,
    check_target,
    fit_length,
    span_of,
)
from ctxlab.tasks.truncation import approx_count_tokens

ANOMALIES = ("CALC_ERROR", "NEGATIVE_BAL", "LOST_UPDATE", "DUPLICATE_TXN")
_SIGNS = {"deposit": (1,), "withdraw": (-1,), "transfer": (-1, 1)}
_KINDS = ("deposit", "withdraw", "transfer", "transfer")  # transfers twice as likely
_MEMOS = ("rent", "payroll", "refund", "groceries", "invoice", "utilities", "loan", "fees", "travel", "gift",
          "tax", "insurance", "dividend", "repair", "tuition", "savings", "salary", "bonus", "phone", "fuel")
_CAP = 400  # largest regular amount (short numbers keep lines short for digit-level tokenizers)
_HIGH = 2500  # mean reversion: balances above this are not grown further
_MEMO_P = 0.25  # base probability that a line carries a memo
_FINE_MAX = 16  # the fine length knob adds memos to at most this many lines
N_MAX = 4000  # operations; TX ids are 4 digits

QUESTION = (
    "Exactly one TX above breaks a rule: CALC_ERROR (new is not old +/- amount), NEGATIVE_BAL (a balance below 0), "
    "LOST_UPDATE (old is not the account's latest balance but an earlier, stale one), DUPLICATE_TXN (a TX id runs "
    "twice). Give the error type and TX id, e.g. NEGATIVE_BAL TX0042."
)
_FORMAT_NOTE = "Each line: TX id, type, accounts, amount: old -> new balance of each account touched."


@dataclass(frozen=True)
class Op:
    """One ledger line. `old`/`new` are the balances of `accounts` (sender first for transfers)."""

    tx: int
    kind: str
    accounts: tuple[str, ...]
    amount: int
    old: tuple[int, ...]
    new: tuple[int, ...]
    memo: str
    memo_on: bool


@dataclass(frozen=True)
class Anomaly:
    kind: str  # one of ANOMALIES, or STATE_MISMATCH / UNKNOWN_ACCOUNT / MALFORMED for logs we never generate
    tx: str  # "TX0042"
    line: int  # 1-based line number in the log text


def render_op(op: Op, memo: bool = False) -> str:
    head = f"TX{op.tx:04d} {op.kind} {' -> '.join(op.accounts)} amount {op.amount}"
    bal = ", ".join(f"{a} {o} -> {n}" for a, o, n in zip(op.accounts, op.old, op.new, strict=True))
    return f"{head}: {bal} (memo: {op.memo})" if memo or op.memo_on else f"{head}: {bal}"


def _op(rng: Random, tx: int, kind: str, names: tuple[str, ...], amount: int, old: tuple[int, ...]) -> Op:
    new = tuple(o + s * amount for o, s in zip(old, _SIGNS[kind], strict=True))
    return Op(tx, kind, names, amount, old, new, rng.choice(_MEMOS), rng.random() < _MEMO_P)


def _forward_amount(rng: Random, kind: str, old: tuple[int, ...]) -> int | None:
    """A random amount that keeps every new balance >= 0 (None when impossible or unwanted)."""
    if kind == "deposit":
        return None if old[0] > _HIGH else rng.randint(max(1, 1 - old[0]), _CAP)  # a negative balance is repaid
    lo = max(1, -old[1]) if kind == "transfer" else 1
    hi = min(old[0], _CAP)
    return rng.randint(lo, hi) if lo <= hi else None


def _forward(rng: Random, state: dict[str, int], accounts: list[str], tx: int, exclude: str = "") -> Op:
    """A random valid operation applied to `state` (updated in place)."""
    pool = [a for a in accounts if a != exclude]
    for _ in range(200):
        kind = rng.choice(_KINDS)
        names = tuple(rng.sample(pool, 2)) if kind == "transfer" else (rng.choice(pool),)
        amount = _forward_amount(rng, kind, tuple(state[a] for a in names))
        if amount is not None:
            op = _op(rng, tx, kind, names, amount, tuple(state[a] for a in names))
            state.update(zip(op.accounts, op.new, strict=True))
            return op
    raise AssertionError("no valid operation found")  # unreachable: some account always accepts a deposit


def _backward(rng: Random, state: dict[str, int], accounts: list[str], tx: int) -> Op:
    """A random valid operation that *ends* in `state`; `state` is rewound to the balances before it."""
    for _ in range(200):
        kind = rng.choice(_KINDS)
        names = tuple(rng.sample(accounts, 2)) if kind == "transfer" else (rng.choice(accounts),)
        after = tuple(state[a] for a in names)
        # The balance that shrinks when rewinding (deposit target, transfer receiver) must stay >= 0 before the op;
        # the one that grows is capped to keep numbers short.
        if kind == "deposit":
            shrink, grow = after[0], None
        elif kind == "withdraw":
            shrink, grow = None, after[0]
        else:
            shrink, grow = after[1], after[0]
        if (shrink is not None and shrink < 1) or (grow is not None and grow > _HIGH):
            continue
        amount = rng.randint(1, min(_CAP, shrink)) if shrink is not None else rng.randint(1, _CAP)
        old = tuple(n - s * amount for n, s in zip(after, _SIGNS[kind], strict=True))
        op = _op(rng, tx, kind, names, amount, old)
        state.update(zip(names, old, strict=True))
        return op
    raise AssertionError("no valid operation found")


class _Ids:
    """Unique random TX ids: needle ids first, then one shared stream split even → before, odd → after the needle
    (so ids stay unique and each side's ids do not depend on the other side's length)."""

    def __init__(self, seed: int, needle: set[int]):
        self.rng, self.used, self.seq = Random(f"bank:{seed}:ids"), set(needle), []

    def get(self, side: int, i: int) -> int:
        while len(self.seq) <= 2 * i + side:
            tx = self.rng.randint(1, 9999)
            if tx not in self.used:
                self.used.add(tx)
                self.seq.append(tx)
        return self.seq[2 * i + side]


@dataclass(frozen=True)
class _Needle:
    accounts: list[str]
    before: dict[str, int]  # balances right before the needle block
    after: dict[str, int]
    ops: list[Op]
    evidence: list[int]  # indices into ops
    anomaly: str
    tx: int
    depth: float
    scratchpad: str


def _sign_word(kind: str, i: int) -> str:
    return "+" if _SIGNS[kind][i] > 0 else "-"


def _make_needle(seed: int, anomaly: str) -> _Needle:
    rng = Random(f"bank:{seed}:needle")
    accounts = [f"A{i}" for i in range(1, rng.randint(3, 6) + 1)]
    before = {a: rng.randint(100, 1500) for a in accounts}
    depth = rng.uniform(0.1, 0.9)
    ids = rng.sample(range(1, 10000), 8)  # all reserved for the needle block
    state = dict(before)
    if anomaly == "CALC_ERROR":
        op = _forward(rng, state, accounts, ids[0])
        i = rng.randrange(len(op.accounts))
        wrong = op.new[i] + rng.choice((-1, 1)) * rng.choice((1, 2, 5, 9, 10, 20, 50, 90, 100, 200))
        wrong = wrong if wrong >= 0 else 2 * op.new[i] - wrong  # mirrored: still wrong, and non-negative
        state[op.accounts[i]] = wrong
        new = op.new[:i] + (wrong,) + op.new[i + 1 :]
        ops = [Op(op.tx, op.kind, op.accounts, op.amount, op.old, new, op.memo, op.memo_on)]
        evidence, tx, a, o = [0], op.tx, op.accounts[i], op.old[i]
        pad = (f"TX{tx:04d} is a {op.kind} of {op.amount}: {a} should go from {o} to {o} {_sign_word(op.kind, i)} "
               f"{op.amount} = {op.new[i]}, but the log writes {wrong}. That is a calculation error.")
    elif anomaly == "NEGATIVE_BAL":
        kind = rng.choice(("withdraw", "transfer"))
        src = rng.choice(accounts)
        names = (src, rng.choice([a for a in accounts if a != src])) if kind == "transfer" else (src,)
        before[src] = state[src] = rng.randint(10, _CAP - 50)  # a low balance keeps the amount in the usual range
        amount = rng.randint(before[src] + 1, _CAP)
        op = _op(rng, ids[0], kind, names, amount, tuple(before[a] for a in names))
        state.update(zip(op.accounts, op.new, strict=True))
        ops, evidence, tx = [op], [0], op.tx
        pad = (f"TX{tx:04d} takes {op.amount} from {src}, which holds only {op.old[0]}: {op.old[0]} - {op.amount} = "
               f"{op.new[0]}, below zero. That is a negative balance.")
    elif anomaly == "LOST_UPDATE":
        x = rng.choice(accounts)
        op1 = _forward_touching(rng, state, accounts, x, ids[0])
        stale, fresh = before[x], state[x]
        gap = [_forward(rng, state, accounts, ids[1 + j], exclude=x) for j in range(rng.randint(0, 1))]
        view = {**state, x: stale}  # the stale read of x
        op2 = _forward_touching(rng, view, accounts, x, ids[7])
        state.update(view)
        ops, evidence, tx = [op1, *gap, op2], [0, len(gap) + 1], op2.tx
        pad = (f"TX{op1.tx:04d} changed {x} from {stale} to {fresh}, but the later TX{tx:04d} starts {x} from the "
               f"stale balance {stale} instead of {fresh}, so the update of TX{op1.tx:04d} is lost.")
    elif anomaly == "DUPLICATE_TXN":
        for _ in range(100):  # redraw until the replay is itself valid (the sender still covers the amount)
            state = dict(before)
            s, d = rng.sample(accounts, 2)
            amount = rng.randint(1, min(before[s], 400))
            op1 = _op(rng, ids[0], "transfer", (s, d), amount, (before[s], before[d]))
            state.update(zip(op1.accounts, op1.new, strict=True))
            gap = [_forward(rng, state, accounts, ids[1 + j]) for j in range(rng.randint(0, 1))]
            if state[s] >= amount:
                break
        op2 = _op(rng, op1.tx, "transfer", (s, d), amount, (state[s], state[d]))
        op2 = Op(op2.tx, op2.kind, op2.accounts, op2.amount, op2.old, op2.new, op1.memo, op1.memo_on)  # exact replay
        assert min(op2.new) >= 0
        state.update(zip(op2.accounts, op2.new, strict=True))
        ops, evidence, tx = [op1, *gap, op2], [0, len(gap) + 1], op1.tx
        pad = (f"TX{tx:04d} (transfer of {amount} from {s} to {d}) appears twice: after it was executed, the same "
               f"TX id is executed again later. That is a duplicate.")
    else:
        raise CtxlabError(f"unknown anomaly {anomaly!r}; valid: {', '.join(ANOMALIES)}")
    pad += f" Answer: {anomaly} TX{tx:04d}"
    return _Needle(accounts, before, state, ops, evidence, anomaly, tx, depth, pad)


def _forward_touching(rng: Random, state: dict[str, int], accounts: list[str], x: str, tx: int) -> Op:
    """A random valid operation that involves account `x` (updates `state`)."""
    for _ in range(200):
        kind = rng.choice(_KINDS)
        if kind == "transfer":
            other = rng.choice([a for a in accounts if a != x])
            names = (x, other) if rng.random() < 0.5 else (other, x)
        else:
            names = (x,)
        amount = _forward_amount(rng, kind, tuple(state[a] for a in names))
        if amount is not None:
            op = _op(rng, tx, kind, names, amount, tuple(state[a] for a in names))
            state.update(zip(op.accounts, op.new, strict=True))
            return op
    raise AssertionError("no valid operation found")


class _Haystack:
    """Lazily grown operation streams: `pre` rewinds from the needle's start state (nearest first), `post` continues
    from its end state. Both are nested in n, so a longer example extends a shorter one at both ends."""

    def __init__(self, seed: int, needle: _Needle):
        self.needle, self.ids = needle, _Ids(seed, {op.tx for op in needle.ops})
        self.rng_pre, self.rng_post = Random(f"bank:{seed}:pre"), Random(f"bank:{seed}:post")
        self.pre: list[Op] = []
        self.pre_state, self.post_state = dict(needle.before), dict(needle.after)
        self.starts: list[dict[str, int]] = []  # starts[i]: balances before pre[i]
        self.post: list[Op] = []

    def take(self, n_pre: int, n_post: int) -> tuple[dict[str, int], list[Op]]:
        accounts = self.needle.accounts
        while len(self.pre) < n_pre:
            self.pre.append(_backward(self.rng_pre, self.pre_state, accounts, self.ids.get(0, len(self.pre))))
            self.starts.append(dict(self.pre_state))
        while len(self.post) < n_post:
            self.post.append(_forward(self.rng_post, self.post_state, accounts, self.ids.get(1, len(self.post))))
        initial = self.starts[n_pre - 1] if n_pre else self.needle.before
        return initial, self.pre[:n_pre][::-1] + self.needle.ops + self.post[:n_post]


def generate(
    seed: int,
    n_tokens: int = 1024,
    *,
    count_tokens: Callable[[str], int] = approx_count_tokens,
    anomaly: str | None = None,
    tolerance: float | None = TOLERANCE,
) -> SandboxExample:
    """A ledger with exactly one anomaly whose no-thinking prompt has `n_tokens` ± 5% tokens.

    The anomaly type cycles with the seed (ANOMALIES[seed % 4]) unless `anomaly` is given. Shortest reachable
    length: about 220 default-counter tokens (the needle block plus question); `tolerance=None` returns the
    closest example instead of raising when the target cannot be met.
    """
    check_seed(seed)
    check_target(n_tokens)
    anomaly = ANOMALIES[seed % len(ANOMALIES)] if anomaly is None else anomaly
    if anomaly not in ANOMALIES:
        raise CtxlabError(f"unknown anomaly {anomaly!r}; valid: {', '.join(ANOMALIES)}")
    needle = _make_needle(seed, anomaly)
    hay = _Haystack(seed, needle)

    def build(n: int, k: int) -> SandboxExample:
        n_pre = round(needle.depth * n)
        initial, ops = hay.take(n_pre, n - n_pre)
        needle_idx = set(range(n_pre, n_pre + len(needle.ops)))
        # The fine knob k: k >= 1 adds a line-format note, then memos on the first k - 1 haystack lines without one.
        lines = ["Bank ledger. Initial balances: " + ", ".join(f"{a} {initial[a]}" for a in needle.accounts) + "."]
        if k >= 1:
            lines.append(_FORMAT_NOTE)
        extra = 1
        for i, op in enumerate(ops):
            add = i not in needle_idx and not op.memo_on and extra < k
            extra += add
            lines.append(render_op(op, memo=add))
        lines.append("End of ledger.")
        context = "\n".join(lines)
        spans, pos = [], 0
        for j in needle.evidence:
            spans.append(span_of(context, render_op(needle.ops[j]), pos))
            pos = spans[-1][1]
        return SandboxExample(
            task="bank",
            context=context,
            question=QUESTION,
            answer=f"{anomaly} TX{needle.tx:04d}",
            evidence=tuple(spans),
            scratchpad=needle.scratchpad,
            meta={"seed": seed, "anomaly": anomaly, "tx": f"TX{needle.tx:04d}", "n_ops": len(ops),
                  "n_accounts": len(needle.accounts), "depth": round(needle.depth, 4), "needle_index": n_pre},
        )

    return fit_length(build, count_tokens, n_tokens, n_max=N_MAX, fine_max=lambda n: min(n, _FINE_MAX) + 1,
                      what="bank ledger", tolerance=tolerance)


# ------------------------------------------------------------------------------------------------ validator

_OP_RE = re.compile(
    r"^TX(\d+) (deposit|withdraw|transfer) (A\d+)(?: -> (A\d+))? amount (\d+): (.+?)(?: \(memo: [a-z ]+\))?$"
)
_BAL_RE = re.compile(r"^(A\d+) (-?\d+) -> (-?\d+)$")
_INIT_RE = re.compile(r"^Bank ledger\. Initial balances: (.*)\.$")


def check_log(text: str) -> list[Anomaly]:
    """Re-parse a ledger (context text) from scratch and list every rule violation, one per offending line.

    Per line the first failing check wins: repeated TX id (DUPLICATE_TXN), old balance that is an earlier value of
    the account (LOST_UPDATE; any other mismatch is STATE_MISMATCH), arithmetic (CALC_ERROR), new < 0
    (NEGATIVE_BAL). Balances are then taken from the line as recorded, so one bad line is reported once.
    """
    balance: dict[str, int] = {}
    history: dict[str, set[int]] = {}
    seen: set[int] = set()
    found: list[Anomaly] = []
    for no, line in enumerate(text.splitlines(), 1):
        if m := _INIT_RE.match(line):
            for part in m.group(1).split(", "):
                name, value = part.split(" ")
                balance[name], history[name] = int(value), {int(value)}
            continue
        if not line.startswith("TX"):
            continue
        m = _OP_RE.match(line)
        tx = line.split(" ", 1)[0]
        if m is None:
            found.append(Anomaly("MALFORMED", tx, no))
            continue
        tx_num, kind, amount = int(m.group(1)), m.group(2), int(m.group(5))
        names = (m.group(3), m.group(4)) if kind == "transfer" else (m.group(3),)
        bals = [_BAL_RE.match(p) for p in m.group(6).split(", ")]
        if (kind == "transfer") != (m.group(4) is not None) or len(bals) != len(names) or None in bals:
            found.append(Anomaly("MALFORMED", tx, no))
            continue
        if [b.group(1) for b in bals] != list(names) or any(a not in balance for a in names):
            found.append(Anomaly("UNKNOWN_ACCOUNT", tx, no))
            continue
        old, new = [int(b.group(2)) for b in bals], [int(b.group(3)) for b in bals]
        problem = None
        if tx_num in seen:
            problem = "DUPLICATE_TXN"
        elif any(o != balance[a] for a, o in zip(names, old, strict=True)):
            stale = all(o == balance[a] or o in history[a] for a, o in zip(names, old, strict=True))
            problem = "LOST_UPDATE" if stale else "STATE_MISMATCH"
        elif any(n != o + s * amount for o, n, s in zip(old, new, _SIGNS[kind], strict=True)):
            problem = "CALC_ERROR"
        elif min(new) < 0:
            problem = "NEGATIVE_BAL"
        if problem:
            found.append(Anomaly(problem, f"TX{tx_num:04d}", no))
        seen.add(tx_num)
        for a, n in zip(names, new, strict=True):
            balance[a] = n
            history[a].add(n)
    return found


# ------------------------------------------------------------------------------------------------ scoring

_TYPES = "|".join(ANOMALIES)
_ANS_RE = re.compile(rf"\b({_TYPES})\b\W{{0,12}}?(?:(?:at|in)\s+)?\bTX[\s_-]?(\d{{1,6}})\b", re.I)
_ANS_REV_RE = re.compile(rf"\bTX[\s_-]?(\d{{1,6}})\b\W{{0,12}}?(?:(?:is|has)\s+(?:an?\s+)?)?\b({_TYPES})\b", re.I)


def parse_answer(text: str) -> str | None:
    """Canonical `BUG_TYPE TXnnnn` from free text: the first match after the last `Final:`, else the last match."""
    region, marked = answer_region(text)
    hits = [(m.start(), m.group(1), m.group(2)) for m in _ANS_RE.finditer(region)]
    hits += [(m.start(), m.group(2), m.group(1)) for m in _ANS_REV_RE.finditer(region)]
    if not hits:
        return None
    _, kind, num = min(hits) if marked else max(hits)
    return f"{kind.upper()} TX{int(num):04d}"


def score(prediction_text: str, example: SandboxExample) -> bool:
    return parse_answer(prediction_text) == example.answer

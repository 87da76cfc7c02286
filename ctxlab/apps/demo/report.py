"""Presentation of a `ctxlab demo` result: the rich / markdown table and the two-panel PNG (accuracy and evidence
attention mass vs prompt length, one colour per strategy, pooled over tasks with thin per-task lines)."""

from __future__ import annotations

from pathlib import Path

from ctxlab.apps.demo.records import DemoResult, wilson

_SHORT = {"in-context": "in-context", "thinking": "thinking", "qttt": "qTTT"}


def _fmt_flops(x: float) -> str:
    return f"{x:.2e}"


def table_rows(result: DemoResult) -> list[list[str]]:
    cfg = result.config
    order_t = {t: i for i, t in enumerate(cfg["tasks"])}
    order_s = {s: i for i, s in enumerate(cfg["strategies"])}
    rows = []
    for p in sorted(result.points, key=lambda p: (order_t[p.task], p.target_tokens, order_s[p.strategy])):
        if p.strategy == "thinking":
            budget = f"{p.think_tokens:.0f} tok" if p.think_tokens is not None else ""
        elif p.strategy == "qttt":
            budget = f"N={p.qttt_steps:.1f}×{cfg['qttt_span']}" if p.qttt_steps is not None else ""
        else:
            budget = ""
        mass = "n/a" if p.attn_mass is None else f"{p.attn_mass:.3f}"
        rows.append([p.task, f"{p.target_tokens} ({p.mean_prompt_tokens:.0f})", _SHORT[p.strategy],
                     f"{100 * p.accuracy:.0f}% ({p.correct}/{p.n})", f"{100 * p.ci_low:.0f}–{100 * p.ci_high:.0f}",
                     f"{100 * p.chance:.1f}%", mass, _fmt_flops(p.flops), f"{p.wall_s:.2f}", budget])
    return rows


HEADERS = ["task", "tokens (actual)", "strategy", "accuracy", "95% CI", "chance", "evidence mass", "MACs/ex",
           "s/ex", "extra compute"]


def rich_table(result: DemoResult):
    from rich.table import Table

    t = Table(title=f"ctxlab demo: {result.model.get('name', '')} — {result.matching}", title_justify="left")
    for h in HEADERS:
        t.add_column(h, justify="left" if h in ("task", "strategy") else "right")
    prev = None
    for row in table_rows(result):
        if prev is not None and row[0] != prev:
            t.add_section()
        prev = row[0]
        t.add_row(*row)
    return t


def markdown_table(result: DemoResult) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(result)]
    return "\n".join(lines)


def plot(result: DemoResult, path: Path) -> Path:
    """Two panels over prompt length: accuracy (pooled over tasks, Wilson 95% band; thin lines per task) and
    evidence attention mass, one colour per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = result.config
    colors = {"in-context": "tab:blue", "thinking": "tab:orange", "qttt": "tab:green"}
    markers = {"kv": "o", "bank": "s", "code": "^"}
    fig, (ax_acc, ax_mass) = plt.subplots(1, 2, figsize=(11, 4.2))
    for strat in cfg["strategies"]:
        pts = [p for p in result.points if p.strategy == strat]
        lengths = sorted({p.target_tokens for p in pts})
        if not lengths:
            continue
        xs, acc, lo, hi, mass = [], [], [], [], []
        for L in lengths:
            ps = [p for p in pts if p.target_tokens == L]
            k, n = sum(p.correct for p in ps), sum(p.n for p in ps)
            a, b = wilson(k, n)
            xs.append(sum(p.mean_prompt_tokens * p.n for p in ps) / n)
            acc.append(k / n)
            lo.append(a)
            hi.append(b)
            ms = [(p.attn_mass, p.n) for p in ps if p.attn_mass is not None]
            mass.append(sum(m * w for m, w in ms) / sum(w for _, w in ms) if ms else float("nan"))
        c = colors[strat]
        ax_acc.plot(xs, acc, "-", color=c, lw=2.2, label=f"{_SHORT[strat]} (all tasks)")
        ax_acc.fill_between(xs, lo, hi, color=c, alpha=0.12)
        ax_mass.plot(xs, mass, "-", color=c, lw=2.2, label=_SHORT[strat])
        for task in cfg["tasks"]:
            tp = sorted((p for p in pts if p.task == task), key=lambda p: p.target_tokens)
            if not tp:
                continue
            tx = [p.mean_prompt_tokens for p in tp]
            ax_acc.plot(tx, [p.accuracy for p in tp], ":", marker=markers[task], color=c, alpha=0.45, ms=4)
            ax_mass.plot(tx, [float("nan") if p.attn_mass is None else p.attn_mass for p in tp], ":",
                         marker=markers[task], color=c, alpha=0.45, ms=4)
    chance: dict[int, list[float]] = {}
    for p in result.points:
        if p.strategy == cfg["strategies"][0]:
            chance.setdefault(p.target_tokens, []).append(p.chance)
    if chance:
        Ls = sorted(chance)
        ax_acc.plot(Ls, [sum(chance[L]) / len(chance[L]) for L in Ls], "--", color="grey", lw=1, label="chance")
    for ax, title in ((ax_acc, "accuracy"), (ax_mass, "attention mass on the evidence")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import FixedLocator, NullLocator

    for ax in (ax_acc, ax_mass):
        ax.xaxis.set_major_locator(FixedLocator(cfg["lengths"]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(L) for L in cfg["lengths"]])
    ax_acc.set_ylim(-0.02, 1.02)
    ax_mass.set_ylim(bottom=0)
    handles = [plt.Line2D([], [], color="grey", ls=":", marker=m, label=t) for t, m in markers.items()
               if t in cfg["tasks"]]
    ax_acc.legend(handles=ax_acc.get_legend_handles_labels()[0] + handles, fontsize=8, loc="best")
    fig.suptitle(f"{result.model.get('name', '')}: {result.matching}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

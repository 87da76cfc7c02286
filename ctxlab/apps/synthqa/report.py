"""Per-language gain from synthetic QA data: paired bootstrap confidence intervals, a markdown table and a PNG.

Inputs are per-sample scores (e.g. XQuAD `f1` in [0, 1]) of a baseline and a system on the *same* samples in the
same order. The bootstrap resamples sample indices with replacement and recomputes the mean difference
(system − baseline); the interval is the percentile interval. The "avg" row is the macro average over languages,
whose interval comes from averaging the languages' bootstrap replicates (languages resampled independently).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctxlab.errors import CtxlabError


@dataclass(frozen=True)
class BootstrapCI:
    gain: float  # mean(system) - mean(baseline) on the full data
    low: float
    high: float
    p_not_better: float  # share of bootstrap replicates with gain <= 0 (a one-sided bootstrap p-value)


@dataclass(frozen=True)
class GainRow:
    lang: str
    n: int
    baseline: float
    system: float
    ci: BootstrapCI


def _paired(baseline: Sequence[float], system: Sequence[float]) -> np.ndarray:
    b = np.asarray(baseline, dtype=np.float64)
    s = np.asarray(system, dtype=np.float64)
    if b.ndim != 1 or s.ndim != 1 or b.shape != s.shape:
        raise CtxlabError(f"paired scores need two flat lists of equal length, got {b.shape} and {s.shape}")
    if b.size == 0:
        raise CtxlabError("paired scores are empty")
    if not (np.isfinite(b).all() and np.isfinite(s).all()):
        raise CtxlabError("paired scores contain NaN or infinity")
    return s - b


def _replicates(diff: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // diff.size)  # bound the index matrix to ~16 MB
    for i in range(0, n_boot, chunk):
        m = min(chunk, n_boot - i)
        out[i:i + m] = diff[rng.integers(0, diff.size, size=(m, diff.size))].mean(axis=1)
    return out


def _check(n_boot: int, confidence: float) -> None:
    if n_boot < 100:
        raise CtxlabError(f"n_boot must be at least 100, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise CtxlabError(f"confidence must be in (0, 1), got {confidence}")


def _ci(gain: float, reps: np.ndarray, confidence: float) -> BootstrapCI:
    alpha = 1.0 - confidence
    low, high = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(float(gain), float(low), float(high), float(np.mean(reps <= 0)))


def paired_bootstrap_ci(baseline: Sequence[float], system: Sequence[float], *, n_boot: int = 2000,
                        confidence: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Percentile CI of mean(system − baseline) by paired bootstrap over samples (deterministic for a seed)."""
    _check(n_boot, confidence)
    diff = _paired(baseline, system)
    return _ci(float(diff.mean()), _replicates(diff, n_boot, np.random.default_rng(seed)), confidence)


def gain_table(per_lang: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, n_boot: int = 2000,
               confidence: float = 0.95, seed: int = 0) -> list[GainRow]:
    """One row per language (sorted) plus an 'avg' macro-average row; values in the inputs' scale."""
    _check(n_boot, confidence)
    if not per_lang:
        raise CtxlabError("no languages to report")
    rows: list[GainRow] = []
    reps: list[np.ndarray] = []
    for i, lang in enumerate(sorted(per_lang)):
        base, sys_ = per_lang[lang]
        try:
            diff = _paired(base, sys_)
        except CtxlabError as e:
            raise CtxlabError(f"{lang}: {e}") from None
        r = _replicates(diff, n_boot, np.random.default_rng([seed, i]))
        reps.append(r)
        rows.append(GainRow(lang, diff.size, float(np.mean(base)), float(np.mean(sys_)),
                            _ci(float(diff.mean()), r, confidence)))
    avg_reps = np.mean(reps, axis=0)
    rows.append(GainRow("avg", sum(r.n for r in rows), float(np.mean([r.baseline for r in rows])),
                        float(np.mean([r.system for r in rows])),
                        _ci(float(np.mean([r.ci.gain for r in rows])), avg_reps, confidence)))
    return rows


def format_gain_table(rows: Sequence[GainRow], *, scale: float = 100.0, metric: str = "F1",
                      confidence: float = 0.95) -> str:
    """Markdown table; `scale` multiplies every value (100 turns [0, 1] scores into points)."""
    pct = f"{confidence * 100:g}%"
    lines = [f"|lang|n|baseline {metric}|system {metric}|gain|{pct} CI|p(gain<=0)|", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"|{r.lang}|{r.n}|{r.baseline * scale:.1f}|{r.system * scale:.1f}|{r.ci.gain * scale:+.1f}|"
                     f"[{r.ci.low * scale:+.1f}, {r.ci.high * scale:+.1f}]|{r.ci.p_not_better:.3f}|")
    return "\n".join(lines)


def plot_gains(rows: Sequence[GainRow], path: str | Path, *, scale: float = 100.0, metric: str = "F1",
               title: str = "Gain from synthetic QA data") -> Path:
    """Bar chart of per-language gains with CI error bars, written as PNG with the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not rows:
        raise CtxlabError("no rows to plot")
    path = Path(path)
    gains = np.array([r.ci.gain for r in rows]) * scale
    lows = gains - np.array([r.ci.low for r in rows]) * scale
    highs = np.array([r.ci.high for r in rows]) * scale - gains
    fig = Figure(figsize=(max(4.0, 0.6 * len(rows) + 1.5), 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = ["tab:gray" if r.lang == "avg" else ("tab:blue" if r.ci.low > 0 else "tab:orange") for r in rows]
    ax.bar([r.lang for r in rows], gains, yerr=np.vstack([lows, highs]), capsize=3, color=colors)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_ylabel(f"{metric} gain (system - baseline)")
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


__all__ = ["BootstrapCI", "GainRow", "format_gain_table", "gain_table", "paired_bootstrap_ci", "plot_gains"]

"""The evaluation runner: plan (validate everything), then execute (load the model, run, commit, aggregate).

    cfg = EvalConfig(model="ckpt", tasks="sandbox:kv,xquad:en", strategy="in-context", out="runs/x", limit=20)
    result = run_eval(cfg)            # RunResult on rank 0 (None on other torchrun ranks)

`plan(cfg)` touches no weights: it checks the backend and its options, the strategy and its options, task names
(through the task registry), task options, metric names, data directories, loads and validates every data row
(a malformed row is a one-line error naming file and row), and compares with what an existing run directory holds
(`--resume` must use the same settings, and stored samples must come from the same data). Only then does
`execute` load the model.

Per sample: the task's prompt is fitted to the backend's context (task policy: LongBench-v2 middle truncation,
ZeroSCROLLS keep-the-query, else cut the oldest context tokens; every cut is recorded), run through the strategy,
parsed and scored by the task, and committed to the run's SQLite store at once (ctxlab/eval/store.py). A killed
run continues with `--resume`; finished samples are never recomputed or lost. Sampling seeds derive from
(run seed, task, sample id), so results do not depend on order, resumption or the number of processes.
Under torchrun (WORLD_SIZE > 1) each rank takes every world-th pending sample and its own store shard; rank 0
merges the shards and writes `results.json` (RunResult) and `samples.jsonl` (one line per sample).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ctxlab.checks import check_int, check_number, coerce_like
from ctxlab.errors import CtxlabError
from ctxlab.eval import distributed
from ctxlab.eval.backends import backend_class
from ctxlab.eval.backends.base import BaseBackend
from ctxlab.eval.results import FLOPS_UNIT, SCHEMA, MetricResult, RunResult, TaskResult, environment
from ctxlab.eval.store import RunStore, SampleRecord
from ctxlab.fileio import check_writable_dir, write_json_atomic, write_jsonl_atomic
from ctxlab.strategies import Outcome, Prompt, Request, Strategy, make_strategy
from ctxlab.tasks.base import Sample, Task, TaskRegistry
from ctxlab.tasks.format import format_prompt
from ctxlab.tasks.metrics import METRICS, Metric, aggregate_by

DEFAULT_MAX_NEW_TOKENS = 64
_TASK_BASE_FIELDS = ("name", "version", "card", "metrics", "languages", "needs_data_dir", "truncation", "breakdown")
_SELECTOR = re.compile(r"^[A-Za-z0-9_.:-]+$")
_MIN_PROMPT_TOKENS = 8


@dataclass(frozen=True)
class EvalConfig:
    """Everything a run depends on. Option tuples hold (name, value) pairs (values may be strings from the CLI)."""

    model: str
    tasks: str  # "sandbox:kv,xquad:en" or a family ("zeroscrolls")
    strategy: str = "in-context"
    budget_think_tokens: int = 8192
    limit: int | None = None  # first N samples of each task
    data_dirs: tuple[str, ...] = ()  # "PATH" (all tasks) or "TASK_OR_FAMILY=PATH"
    out: str = "runs/eval"
    resume: bool = False
    backend: str = "native"
    backend_options: tuple[tuple[str, Any], ...] = ()
    task_options: tuple[tuple[str, Any], ...] = ()
    strategy_options: tuple[tuple[str, Any], ...] = ()
    metrics: tuple[str, ...] = ()  # () = every task's own metrics
    max_new_tokens: int | None = None  # None = each task's official budget
    temperature: float | None = None  # None = each task's own (0 = greedy)
    seed: int = 0
    bootstrap: int = 1000


@dataclass
class TaskPlan:
    task: Task
    samples: list[Sample]
    hashes: list[str]
    metrics: dict[str, Metric]
    data_dir: Path | None
    max_new_tokens: int
    temperature: float
    truncation: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    cfg: EvalConfig
    backend_cls: type[BaseBackend]
    backend_options: dict[str, Any]
    strategy: Strategy
    tasks: list[TaskPlan]
    identity: dict[str, Any]
    settings: dict[str, Any]
    fingerprint: str
    store: RunStore
    pending: list[tuple[int, int]]  # (task position, sample position) still to run
    stored: int  # samples of this plan already in the store


# ------------------------------------------------------------------------------------------------ small helpers


def parse_pairs(items: Sequence[str], what: str) -> tuple[tuple[str, str], ...]:
    """["k=v", ...] → (("k", "v"), ...); one-line errors for items without '='."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CtxlabError(f"{what} must look like KEY=VALUE, got {item!r}")
        out.append((key.strip(), value))
    return tuple(out)


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode()).hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def sample_seed(seed: int, task: str, sample_id: str) -> int:
    return int(hashlib.sha256(f"{seed}\x00{task}\x00{sample_id}".encode()).hexdigest()[:8], 16)


# ------------------------------------------------------------------------------------------------ tasks


def _registry(extra_tasks: Sequence[Task], data_dirs: Sequence[str] = ()) -> TaskRegistry:
    """The registered tasks, plus `extra_tasks`, plus what the data directories add (e.g. xquad.th.json)."""
    from ctxlab.tasks import discover, registry

    base = registry()
    found = list(extra_tasks)
    for spec in data_dirs:
        sel, sep, path = spec.partition("=")
        path = path if sep and _SELECTOR.match(sel) and "/" not in sel else spec
        if Path(path).expanduser().is_dir():
            found += discover(Path(path).expanduser())
    known: set[str] = set(base.names())
    extra = []
    for t in found:
        if t.name not in known:
            known.add(t.name)
            extra.append(t)
    return TaskRegistry([base.get(n) for n in base.names()] + extra)


def _scalar_fields(task: Task) -> dict[str, Any]:
    return {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
            if f.name not in _TASK_BASE_FIELDS and isinstance(getattr(task, f.name), (bool, int, float, str))}


def apply_task_options(tasks: list[Task], options: Sequence[tuple[str, Any]]) -> tuple[list[Task], list[dict]]:
    """Set scalar task fields (e.g. n_tokens, n_samples, split, prompt_style) on every selected task having them."""
    applied: list[dict[str, Any]] = [{} for _ in tasks]
    out = list(tasks)
    for key, value in options:
        hits = [i for i, t in enumerate(out) if key in _scalar_fields(t)]
        if not hits:
            valid = sorted({k for t in out for k in _scalar_fields(t)})
            raise CtxlabError(f"unknown task option {key!r} for the selected tasks; valid options: "
                              f"{', '.join(valid) or 'none'}")
        for i in hits:
            v = coerce_like(_scalar_fields(out[i])[key], value, f"task option {key}")
            out[i] = dataclasses.replace(out[i], **{key: v})
            applied[i][key] = v
    return out, applied


def assign_data_dirs(tasks: Sequence[Task], specs: Sequence[str]) -> list[Path | None]:
    """Per task: its TASK=PATH, else its FAMILY=PATH, else the bare PATH; checked to exist."""
    default: str | None = None
    chosen: dict[str, str] = {}
    for spec in specs:
        sel, sep, path = spec.partition("=")
        if sep and _SELECTOR.match(sel) and "/" not in sel:
            if not any(t.name == sel or t.name.split(":")[0] == sel for t in tasks):
                raise CtxlabError(f"--data-dir {sel}=... matches no selected task (selected: "
                                  f"{', '.join(t.name for t in tasks)})")
            chosen[sel] = path
        else:
            default = spec
    out: list[Path | None] = []
    for t in tasks:
        raw = chosen.get(t.name) or chosen.get(t.name.split(":")[0]) or default
        if raw is None:
            if t.needs_data_dir:
                raise CtxlabError(f"task {t.name} needs a data directory: pass --data-dir "
                                  f"{t.name.split(':')[0]}=PATH")
            out.append(None)
            continue
        p = Path(raw).expanduser()
        if not p.exists():
            raise CtxlabError(f"data directory {p} (for task {t.name}) does not exist")
        out.append(p)
    return out


def task_metric(task: Task, name: str) -> Metric:
    m = task.metric(name)
    if m is not None:
        return m
    if name in METRICS:
        return METRICS[name]
    raise CtxlabError(f"task {task.name} reports metric {name!r}, which no metric registry defines")


def select_metrics(tasks: Sequence[Task], wanted: Sequence[str]) -> list[dict[str, Metric]]:
    known = sorted(set(METRICS) | {m for t in tasks for m in t.metrics})
    for m in wanted:
        if m not in known:
            raise CtxlabError(f"unknown metric {m!r}; valid metrics: {', '.join(known)}")
    out = []
    for t in tasks:
        names = [m for m in t.metrics if not wanted or m in wanted]
        if not names:
            raise CtxlabError(f"task {t.name} reports none of the requested metrics ({', '.join(wanted)}); "
                              f"it reports {', '.join(t.metrics)}")
        out.append({m: task_metric(t, m) for m in names})
    return out


def load_task_samples(task: Task, data_dir: Path | None, limit: int | None) -> tuple[list[Sample], list[str]]:
    """Validated samples (first `limit`) and their hashes; malformed rows raise from the task's loader."""
    samples = list(itertools.islice(task.samples(data_dir), limit))
    if not samples:
        raise CtxlabError(f"task {task.name}: no samples in {data_dir}")
    seen: set[str] = set()
    hashes = []
    for s in samples:
        if s.id in seen:
            raise CtxlabError(f"task {task.name}: duplicate sample id {s.id!r}")
        seen.add(s.id)
        if s.reference is None or (isinstance(s.reference, (list, tuple, str, dict)) and len(s.reference) == 0):
            raise CtxlabError(f"task {task.name}: sample {s.id!r} has no gold reference (a test split with "
                              "private answers?); evaluate a split with references")
        hashes.append(_sha({"prompt": task.prompt(s), "reference": s.reference}))
    return samples, hashes


# ------------------------------------------------------------------------------------------------ plan


def _fingerprint_view(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that must match for --resume (paths and operational options excluded)."""
    model = dict(settings["model"])
    model.pop("path", None)
    if "config_hash" in model:
        model.pop("model", None)  # the same checkpoint may be named by another path
    tasks = {n: {k: v for k, v in t.items() if k != "data_dir"} for n, t in settings["tasks"].items()}
    return {**{k: v for k, v in settings.items() if k not in ("model", "tasks", "created")},
            "model": model, "tasks": tasks}


def plan(cfg: EvalConfig, extra_tasks: Sequence[Task] = ()) -> Plan:
    """Validate everything a run needs, without loading a model; see the module docstring."""
    check_int("limit", cfg.limit, 1, allow_none=True)
    check_int("seed", cfg.seed, 0)
    check_int("bootstrap", cfg.bootstrap, 2)
    check_int("max_new_tokens", cfg.max_new_tokens, 1, allow_none=True)
    check_number("temperature", cfg.temperature, 0, allow_none=True)
    if not cfg.model:
        raise CtxlabError("no model given")

    cls = backend_class(cfg.backend)
    opts = cls.check_options(dict(cfg.backend_options))
    if "device" in opts:
        opts["device"] = distributed.rank_device(opts["device"], distributed.env_world())
    strategy = make_strategy(cfg.strategy, cfg.budget_think_tokens, dict(cfg.strategy_options),
                             supported=cls.strategies, backend=cls.name)

    selected = list({t.name: t for t in _registry(extra_tasks, cfg.data_dirs).resolve(cfg.tasks)}.values())
    selected, applied = apply_task_options(selected, cfg.task_options)
    metric_sets = select_metrics(selected, cfg.metrics)
    dirs = assign_data_dirs(selected, cfg.data_dirs)

    out = check_writable_dir(cfg.out, "--out")
    store = RunStore(out)
    if store.exists() and not cfg.resume:
        raise CtxlabError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")

    cls.check_ready(cfg.model, opts)
    identity = cls.identity(cfg.model, opts)

    tplans: list[TaskPlan] = []
    for task, metrics, data_dir, options in zip(selected, metric_sets, dirs, applied, strict=True):
        samples, hashes = load_task_samples(task, data_dir, cfg.limit)
        max_new = cfg.max_new_tokens or task.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
        temp = cfg.temperature if cfg.temperature is not None else float(task.temperature)
        tplans.append(TaskPlan(task, samples, hashes, metrics, data_dir, int(max_new), float(temp), task.truncation,
                               options))

    context = cls.context_hint(cfg.model, opts)
    for tp in tplans:
        need = strategy.reserve(tp.max_new_tokens) + _MIN_PROMPT_TOKENS
        if context is not None and need > context:
            think = f"thinking budget {cfg.budget_think_tokens}, " if strategy.budget_fields else ""
            raise CtxlabError(f"{tp.task.name}: {strategy.name} reserves {need - _MIN_PROMPT_TOKENS} tokens for "
                              f"generation ({think}answer {tp.max_new_tokens}), more than the model's context of "
                              f"{context} tokens leaves room for; lower "
                              f"{'--budget-think-tokens or ' if think else ''}--max-new-tokens")

    settings = {
        "schema": SCHEMA,
        "model": identity,
        "backend": {"name": cls.name, "options": {k: v for k, v in opts.items()
                                                  if getattr(cls.OPTIONS.get(k), "identity", True)}},
        "strategy": {**strategy.describe(), "budget_think_tokens": cfg.budget_think_tokens},
        "tasks": {tp.task.name: {"version": tp.task.version, "options": tp.options, "metrics": list(tp.metrics),
                                 "max_new_tokens": tp.max_new_tokens, "temperature": tp.temperature,
                                 "truncation": tp.truncation,
                                 "data_dir": str(tp.data_dir) if tp.data_dir else None} for tp in tplans},
        "seed": cfg.seed,
    }
    fingerprint = _sha(_fingerprint_view(settings))

    done: dict[tuple[str, str], str] = {}
    if cfg.resume and store.exists():
        old = store.read_run()
        if old is not None and old.get("fingerprint") != fingerprint:
            a, b = _fingerprint_view(old.get("settings", {})), _fingerprint_view(settings)
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) or ["settings"]
            raise CtxlabError(f"{out} holds a run with different {', '.join(diff)}; resume with the original "
                              "settings or choose another --out")
        done = store.done()
    pending: list[tuple[int, int]] = []
    stored = 0
    for ti, tp in enumerate(tplans):
        for si, (s, h) in enumerate(zip(tp.samples, tp.hashes, strict=True)):
            old_hash = done.get((tp.task.name, s.id))
            if old_hash is None:
                pending.append((ti, si))
            elif old_hash != h:
                raise CtxlabError(f"{out}: stored sample {s.id!r} of {tp.task.name} was computed from different "
                                  "data (prompt or reference changed); use another --out")
            else:
                stored += 1
    return Plan(cfg, cls, opts, strategy, tplans, identity, settings, fingerprint, store, pending, stored)


# ------------------------------------------------------------------------------------------------ fitting


@dataclass(frozen=True)
class Fitted:
    prompt: str
    structured: tuple[str, str] | None
    prompt_tokens: int | None
    truncated: int


def fit_prompt(tp: TaskPlan, sample: Sample, backend: BaseBackend, reserve: int, thinking: bool = False) -> Fitted:
    """The task prompt fitted to the backend's context, leaving `reserve` tokens for what is generated.

    Lengths are measured as the backend will send the prompt (`sent_tokens`: chat template included), while the
    task's truncation works on plain prompt tokens; the budget is corrected until the sent prompt fits."""
    text = tp.task.prompt(sample)
    structured = (sample.context, sample.question) if text == format_prompt(sample.context, sample.question) else None
    ctx = backend.context_length
    if ctx is None:  # unknown (remote server without metadata): send as is, the server decides
        return Fitted(text, structured, None, 0)
    limit = ctx - reserve
    n = backend.sent_tokens(text, structured, thinking)
    if n <= limit:
        return Fitted(text, structured, n, 0)
    tok = backend.tokenizer_like()
    budget = len(tok.encode(text)) - (n - limit)
    for _ in range(8):
        if budget < _MIN_PROMPT_TOKENS:
            raise CtxlabError(f"{tp.task.name}: the model's context of {ctx} tokens leaves too little room for the "
                              f"prompt after reserving {reserve} tokens for generation; lower --max-new-tokens or "
                              "--budget-think-tokens")
        fitted, short = tp.task.fit_to(sample, tok, budget)
        fitted_structured = (short.context, short.question) if structured and short is not None else None
        m = backend.sent_tokens(fitted, fitted_structured, thinking)
        if m <= limit:
            return Fitted(fitted, fitted_structured, m, max(0, n - m))
        budget -= m - limit
    raise CtxlabError(f"{tp.task.name} sample {sample.id!r}: could not fit the prompt into {limit} tokens")


# ------------------------------------------------------------------------------------------------ execute


def _record(tp: TaskPlan, si: int, fitted: Fitted, out: Outcome, rank: int) -> SampleRecord:
    s = tp.samples[si]
    pred = tp.task.parse(out.answer_text)
    scores = tp.task.score(pred, s)
    missing = [m for m in tp.metrics if m not in scores]
    if missing:
        raise CtxlabError(f"task {tp.task.name} returned no {', '.join(missing)} score for sample {s.id!r}")
    return SampleRecord(task=tp.task.name, sample_id=s.id, index=si, sample_hash=tp.hashes[si],
                        prompt_hash=text_hash(fitted.prompt), prediction=pred, generation=out.generation,
                        reference=s.reference, scores=dict(scores), flops=out.flops, wall_s=out.wall_s,
                        prompt_tokens=fitted.prompt_tokens, truncated_tokens=fitted.truncated, rank=rank,
                        extra={**out.diagnostics, "answer_text": out.answer_text})


def _request(p: Plan, tp: TaskPlan, si: int, backend: BaseBackend) -> tuple[Fitted, Request]:
    s = tp.samples[si]
    fitted = fit_prompt(tp, s, backend, p.strategy.reserve(tp.max_new_tokens), p.strategy.thinking)
    prompt = Prompt(*fitted.structured) if fitted.structured else fitted.prompt
    req = Request(prompt, tp.max_new_tokens, tp.temperature, sample_seed(p.cfg.seed, tp.task.name, s.id),
                  parse=lambda text: text)  # self-consistency votes on the answer text; the task parses the winner
    return fitted, req


def _run_items(p: Plan, items: Sequence[tuple[int, int]], backend: BaseBackend, rank: int,
               window: int) -> Iterator[SampleRecord]:
    """Records in finishing order; `window` requests of one task go to the strategy at a time (remote backends
    run them concurrently)."""
    for ti, group in itertools.groupby(items, key=lambda x: x[0]):
        tp = p.tasks[ti]
        sis = [si for _, si in group]
        for start in range(0, len(sis), window):
            chunk = sis[start:start + window]
            prepared = [_request(p, tp, si, backend) for si in chunk]
            for k, out in p.strategy.run_many(backend, [r for _, r in prepared]):
                yield _record(tp, chunk[k], prepared[k][0], out, rank)


def execute(p: Plan, *, progress: bool = False, console: Any = None) -> RunResult | None:
    """Load the model (only if something is pending), run this rank's samples, merge and write results."""
    from ctxlab.progress import progress_bar  # rich loads only when a run executes

    started = time.time()
    info = distributed.init(str(p.backend_options.get("device", "cpu")))
    backend: BaseBackend | None = None
    created_out = not p.store.out.exists()
    try:
        checks = distributed.all_gather(_sha(p.pending), info)
        if len(set(checks)) > 1:
            raise CtxlabError("torchrun ranks disagree on the pending samples (was the run directory changed "
                              "while they started?)")
        if info.is_main and p.store.read_run() is None:
            p.store.write_run({"settings": p.settings, "fingerprint": p.fingerprint,
                               "created": datetime.now(timezone.utc).isoformat()})
        mine = p.pending[info.rank::info.world_size]
        load_s = eval_s = 0.0
        if mine:
            t0 = time.perf_counter()
            backend = p.backend_cls.load(p.cfg.model, p.backend_options)
            load_s = time.perf_counter() - t0
            window = max(1, 2 * int(p.backend_options.get("concurrency", 1) or 1))
            t1 = time.perf_counter()
            with progress_bar(console, enabled=progress and info.is_main) as bar, p.store.shard(info.rank) as shard:
                label = f"{p.strategy.name} · rank {info.rank}/{info.world_size}" if info.active else p.strategy.name
                job = bar.add_task(label, total=len(mine))
                for rec in _run_items(p, mine, backend, info.rank, window):
                    shard.put(rec)
                    bar.advance(job)
            eval_s = time.perf_counter() - t1
        distributed.barrier(info)
        if not info.is_main:
            return None
        timings = {"started": datetime.fromtimestamp(started, timezone.utc).isoformat(),
                   "finished": datetime.now(timezone.utc).isoformat(), "wall_s": time.time() - started,
                   "load_s": load_s, "eval_s": eval_s, "computed_now": len(p.pending), "resumed": p.stored}
        result = finalize(p, timings, info.world_size)
        return result
    except BaseException:
        if info.is_main and p.stored == 0:
            p.store.discard_if_empty(created_out)
        raise
    finally:
        if backend is not None:
            backend.close()
        distributed.shutdown(info)


def run_eval(cfg: EvalConfig, *, progress: bool = False, console: Any = None,
             extra_tasks: Sequence[Task] = ()) -> RunResult | None:
    return execute(plan(cfg, extra_tasks), progress=progress, console=console)


# ------------------------------------------------------------------------------------------------ results


def _task_result(p: Plan, tp: TaskPlan, recs: Mapping[str, SampleRecord]) -> TaskResult:
    missing = [s.id for s in tp.samples if s.id not in recs]
    if missing:
        raise CtxlabError(f"{len(missing)} samples of {tp.task.name} are missing from the store (e.g. "
                          f"{missing[0]!r}); rerun with --resume")
    ordered = [recs[s.id] for s in tp.samples]
    metrics: dict[str, MetricResult] = {}
    breakdown: dict[str, dict[str, dict[str, float]]] = {}
    for name, m in tp.metrics.items():
        vals = [tuple(v) if isinstance(v, list) else v for v in (r.scores[name] for r in ordered)]
        metrics[name] = MetricResult(m.aggregate(vals), m.stderr(vals, n=p.cfg.bootstrap, seed=p.cfg.seed),
                                     m.higher_is_better, m.description)
        for key in tp.task.breakdown:
            groups = [str(s.meta.get(key)) for s in tp.samples]
            breakdown.setdefault(name, {})[key] = aggregate_by(m, vals, groups)
    flops = [r.flops for r in ordered]
    total = float(sum(flops)) if all(f is not None for f in flops) else None
    return TaskResult(
        name=tp.task.name, version=tp.task.version, languages=list(tp.task.languages), n_samples=len(ordered),
        metrics=metrics, breakdown=breakdown, truncation=tp.truncation,
        truncated_samples=sum(1 for r in ordered if r.truncated_tokens > 0), max_new_tokens=tp.max_new_tokens,
        temperature=tp.temperature, flops_total=total, flops_per_sample=None if total is None else total / len(ordered),
        wall_s_total=float(sum(r.wall_s for r in ordered)),
        data_dir=str(tp.data_dir) if tp.data_dir else None, options=tp.options,
    )


def finalize(p: Plan, timings: dict[str, Any], world_size: int = 1) -> RunResult:
    """Merge the store, aggregate every task, write results.json and samples.jsonl (atomically)."""
    merged = p.store.merged()
    by_task: dict[str, dict[str, SampleRecord]] = {}
    for rec in merged.records:
        by_task.setdefault(rec.task, {})[rec.sample_id] = rec
    tasks = {tp.task.name: _task_result(p, tp, by_task.get(tp.task.name, {})) for tp in p.tasks}
    totals = [t.flops_total for t in tasks.values()]
    flops = {"total": float(sum(totals)) if all(x is not None for x in totals) else None,
             "unit": FLOPS_UNIT if all(x is not None for x in totals) else None}
    timings = {**timings, "sample_wall_s": float(sum(t.wall_s_total for t in tasks.values()))}
    result = RunResult(
        schema=SCHEMA, run_dir=str(p.store.out), model=p.identity,
        backend={"name": p.backend_cls.name, "options": p.backend_options}, strategy=p.settings["strategy"],
        tasks=tasks, seed=p.cfg.seed, limit=p.cfg.limit, bootstrap=p.cfg.bootstrap,
        n_samples=sum(t.n_samples for t in tasks.values()), flops=flops, timings=timings,
        env=environment(world_size, p.backend_options.get("device")), fingerprint=p.fingerprint,
        duplicates=merged.duplicates,
    )
    write_json_atomic(p.store.out / "results.json", result.to_dict())
    rows = []
    for tp in p.tasks:
        recs = by_task.get(tp.task.name, {})
        rows.extend({"id": recs[s.id].sample_id, **dataclasses.asdict(recs[s.id])} for s in tp.samples)
    write_jsonl_atomic(p.store.out / "samples.jsonl", rows)
    return result

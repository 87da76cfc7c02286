"""Build, train and evaluate a small TicketTalk agent on the one training loop (ctxlab/train).

    ctxlab tickets prepare --out runs/tickets          # data, tokenizer, initial model
    ctxlab train pretrain --config configs/tickets_lm.toml           # dialogue LM (whole dialogues)
    ctxlab train sft --config configs/tickets_sft.toml               # next-action SFT
    ctxlab train dpo --config configs/tickets_dpo.toml               # reward pairs (optional)
    ctxlab tickets eval runs/tickets/sft/final --data runs/tickets/sim_eval.tsv

`prepare` writes under OUT: sim_train.tsv / sim_eval.tsv (simulated dialogues, different seeds), tm3_train.tsv /
tm3_eval.tsv (train-bc.tsv split by conversation), lm.txt (whole dialogues for the LM stage), sft.jsonl, dpo.jsonl
(converters in convert.py, rows fitted to `seq_len` tokens of the new tokenizer), init/ (a Qwen3-architecture
model with random weights and a byte-level BPE trained on the dialogue text, the TM-3 tags as single tokens) and
manifest.json (counts). `eval` scores a checkpoint through the `tickettalk` task (API exact match, per-argument F1,
reply BLEU), `baseline` scores trivial predictors on the same rows.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ctxlab.apps.tickets.convert import (
    END_TEXT,
    Stats,
    dpo_rows,
    example_dialogue,
    lm_text,
    sft_rows,
    split_conversations,
)
from ctxlab.apps.tickets.ontology import shipped_train_tsv, tm3_dir
from ctxlab.errors import CtxlabError
from ctxlab.fileio import write_jsonl_atomic
from ctxlab.tasks.tickettalk import metrics as M
from ctxlab.tasks.tickettalk.formats import format_items, parse_items, read_reward, read_tsv, write_tsv

TAGS = ("<U>", "<A>", "<S>", "<C>", "<PN>", "<PAN>", "<PAV>", "<PR>", "<PRAN>", "<PRAV>", "[A]", "[PN]", "[PAN]",
        "[PAV]")
# The shipped agent's shape: ~3.6M parameters (float32 ≈ 15 MB).
MODEL_SHAPE = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64)


def schema_names() -> tuple[str, ...]:
    """API names and dotted argument / response keys ("find_showtimes", "time.showing"): one token each."""
    from ctxlab.apps.tickets.ontology import BUILTIN_APIS, load_ontology

    names: set[str] = set(BUILTIN_APIS)
    for spec in load_ontology().apis.values():
        names.update(x for x in (spec.name, *spec.allowed_args(), *spec.response_keys) if "_" in x or "." in x)
    return tuple(sorted(names))


def build_init(out: str | Path, texts: Sequence[str], *, vocab_size: int = 3072, max_len: int = 1024, seed: int = 0,
               **shape: int) -> Path:
    """A byte-level BPE (digits split, TM-3 tags as single added tokens) trained on `texts`, and a randomly
    initialised Qwen3-architecture model, saved in HF format (what `model.init` of an SFT config points to)."""
    import torch
    from tokenizers import AddedToken

    from ctxlab.models import model_class
    from ctxlab.models.loading import save_model
    from ctxlab.train.scratch import init_weights, scratch_hf_config, train_tokenizer, write_tokenizer

    out = Path(out)
    tok = train_tokenizer(texts, vocab_size, individual_digits=True)
    tok.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
                    for t in TAGS + schema_names()])
    write_tokenizer(tok, out, max_len)
    eos = [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
    dims = {**MODEL_SHAPE, **shape}
    hf = scratch_hf_config(tok.get_vocab_size(), "small", max_len, eos, **dims)
    cls = model_class("qwen3")
    torch.manual_seed(seed)
    model = cls(cls.config_cls.from_hf_config(hf))
    init_weights(model, seed)
    save_model(model, out)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": eos[1]}, indent=2))
    return out


def reward_files() -> list[Path]:
    d = tm3_dir()
    return sorted((d / "reward").glob("reward_*.json")) if d else []


def prepare(out: str | Path, *, n_sim: int = 4000, n_sim_eval: int = 200, seed: int = 0, heldout: float = 0.1,
            seq_len: int = 512, sft_sim_dialogues: int = 1500, tm3_repeat: int = 2, vocab_size: int = 3072,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the training/evaluation data and the initial checkpoint (see the module docstring)."""
    from ctxlab.apps.tickets.simulate import sim_examples, simulate
    from ctxlab.tokenizer import Tokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tsv = shipped_train_tsv()
    tm3_train, tm3_eval = split_conversations(read_tsv(tsv), heldout, seed) if tsv else ([], [])
    sims = simulate(n_sim, seed)
    sims_eval = simulate(n_sim_eval, seed + 1_000)
    log(f"simulated {len(sims)} + {len(sims_eval)} dialogues in {time.perf_counter() - t0:.0f}s")
    sim_train_rows, sim_eval_rows = sim_examples(sims), sim_examples(sims_eval)
    write_tsv(out / "sim_train.tsv", sim_train_rows)
    write_tsv(out / "sim_eval.tsv", sim_eval_rows)
    if tsv:
        write_tsv(out / "tm3_train.tsv", tm3_train)
        write_tsv(out / "tm3_eval.tsv", tm3_eval)

    dialogues = [list(s.items) for s in sims] + [example_dialogue(ex) for ex in tm3_train]
    text = lm_text(dialogues)
    (out / "lm.txt").write_text(text, encoding="utf-8")
    init = out / "init"
    if not (init / "model.safetensors").is_file():
        build_init(init, [d for d in text.split(END_TEXT) if d], vocab_size=vocab_size, max_len=max(1024, seq_len),
                   seed=seed)
    tok = Tokenizer.from_dir(init)
    count = tok.count_tokens
    lm_tokens = count(text)

    sft_stats = {"sim": Stats(), "tm3": Stats()}
    sim_rows = sft_rows(sim_examples(sims[:sft_sim_dialogues]), max_tokens=seq_len, count_tokens=count,
                        source="sim", stats=sft_stats["sim"])
    tm3_rows = sft_rows(tm3_train, max_tokens=seq_len, count_tokens=count, source="tm3", stats=sft_stats["tm3"])
    n_sft = write_jsonl_atomic(out / "sft.jsonl", sim_rows + tm3_rows * tm3_repeat)
    dpo_stats = Stats()
    rewards = [ex for f in reward_files() for ex in read_reward(f)]
    n_dpo = write_jsonl_atomic(out / "dpo.jsonl", dpo_rows(rewards, max_tokens=seq_len, count_tokens=count, seed=seed,
                                                    stats=dpo_stats)) if rewards else 0
    manifest = {
        "seed": seed, "seq_len": seq_len, "vocab_size": tok.vocab_size,
        "sim_dialogues": {"train": len(sims), "eval": len(sims_eval),
                          "bookings": sum(s.booked for s in sims)},
        "rows": {"sim_train": len(sim_train_rows), "sim_eval": len(sim_eval_rows), "tm3_train": len(tm3_train),
                 "tm3_eval": len(tm3_eval)},
        "lm": {"dialogues": len(dialogues), "tokens": lm_tokens},
        "sft": {"rows": n_sft, "tm3_repeat": tm3_repeat, "sim_dialogues": min(sft_sim_dialogues, len(sims)),
                **{k: v.as_dict() for k, v in sft_stats.items()}},
        "dpo": {"rows": n_dpo, **dpo_stats.as_dict()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    log(json.dumps(manifest))
    return manifest


# ------------------------------------------------------------------------------------------------ evaluation


def task_samples(data: str | Path, limit: int | None = None) -> list:
    from ctxlab.tasks.tickettalk import TASKS

    task = TASKS[0]
    samples = list(task.samples(Path(data)))
    return samples[:limit] if limit else samples


def score_predictions(samples: Sequence, generations: Sequence[str]) -> dict[str, Any]:
    """Task scores (0-100) overall and by target kind (reply / call / both), from raw generations."""
    from ctxlab.tasks.tickettalk import TASKS

    task = TASKS[0]
    rows = [task.score(task.parse(g), s) for g, s in zip(generations, samples, strict=True)]
    out: dict[str, Any] = {"n": len(rows), **M.aggregate(rows)}
    by: dict[str, list] = {}
    for r, s in zip(rows, samples, strict=True):
        by.setdefault(s.meta["target_kind"], []).append(r)
    out["by_target"] = {k: {"n": len(v), **M.aggregate(v)} for k, v in sorted(by.items())}
    calls = [M.parse_action(task.parse(g)).call for g in generations]
    out["predicted_calls"] = sum(c is not None for c in calls)
    return out


def evaluate(model: str | Path, data: str | Path, *, limit: int | None = None, batch_size: int = 8,
             max_prompt_tokens: int = 512, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Greedy next-action predictions of a checkpoint on a tickettalk data file, scored by the task."""
    from ctxlab.apps.tickets.agent import NativePredictor
    from ctxlab.tasks.tickettalk import TASKS

    task = TASKS[0]
    samples = task_samples(data, limit)
    pred = NativePredictor(model, max_prompt_tokens=max_prompt_tokens)
    t0 = time.perf_counter()
    gens = pred.predict_batch([task.prompt(s) for s in samples], batch_size=batch_size)
    res = score_predictions(samples, gens)
    res.update({"model": str(model), "data": str(data), "seconds": round(time.perf_counter() - t0, 1),
                "truncated_prompts": pred.truncated})
    log(json.dumps({k: v for k, v in res.items() if k != "by_target"}))
    return res


def selfplay(model: str | Path | None, n: int = 20, *, seed: int = 10_000, max_turns: int = 16, predictor=None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """End-to-end: the agent loop (model + real backend) against `n` simulated users with sampled goals. A
    dialogue succeeds when a booking made in it matches the user's goal (movie, theater, day, time, tickets)."""
    from ctxlab.apps.tickets import values as V
    from ctxlab.apps.tickets.agent import NativePredictor, TicketAgent
    from ctxlab.apps.tickets.backend import BookingBackend
    from ctxlab.apps.tickets.simuser import backend_catalogue, sim_user

    pred = predictor or NativePredictor(model)
    t0 = time.perf_counter()
    rows = []
    with BookingBackend() as backend:
        cat = backend_catalogue(backend)
        for i in range(n):
            user = sim_user(seed + i, catalogue=cat)
            agent = TicketAgent(pred, backend, session=f"selfplay-{seed + i}")
            before = len(backend.bookings())
            turn, turns, calls = user.opening(), 0, []
            guards = 0
            while turn is not None and turns < max_turns:
                res = agent.user(turn.text)
                turns += 1
                calls += [r for _, r in res.calls]
                guards += res.guard is not None
                turn = user.respond(res.reply)
            g = user.g
            ok = False
            for b in backend.bookings()[before:]:
                st = backend.showtime(b["showtime_id"])
                ok |= (backend.movies[st["movie_id"]]["title"] == g.movie
                       and backend.theaters[st["theater_id"]]["name"] == g.theater and st["day"] == g.day
                       and V.format_time(st["minutes"]) == g.time and b["num_tickets"] == g.tickets)
            rows.append({"success": ok, "booked": len(backend.bookings()) > before, "turns": turns,
                         "calls": len(calls), "failed_calls": sum(not r.get("ok") for r in calls), "guards": guards,
                         "finished": turn is None})
    k = max(1, len(rows))
    out = {"dialogues": len(rows), "goal_success": 100 * sum(r["success"] for r in rows) / k,
           "any_booking": 100 * sum(r["booked"] for r in rows) / k,
           "user_finished": 100 * sum(r["finished"] for r in rows) / k,
           "turns_per_dialogue": sum(r["turns"] for r in rows) / k,
           "calls_per_dialogue": sum(r["calls"] for r in rows) / k,
           "failed_call_rate": 100 * sum(r["failed_calls"] for r in rows) / max(1, sum(r["calls"] for r in rows)),
           "guarded_turns": sum(r["guards"] for r in rows), "seconds": round(time.perf_counter() - t0, 1)}
    log(json.dumps(out))
    return out


def replay_script(seed: int, index: int) -> tuple[list[str], list[str]]:
    """(user lines, agent actions) of simulated dialogue `index` of `simulate(index + 1, seed)`: a scripted user
    and a ScriptedPredictor that replays the rule agent's actions (for a transcript of the loop itself)."""
    from ctxlab.apps.tickets.simulate import simulate
    from ctxlab.tasks.tickettalk.formats import ApiCall, Utterance, format_item

    sim = simulate(index + 1, seed)[index]
    users = [it.text for it in sim.items if isinstance(it, Utterance) and it.speaker == "user"]
    actions = [format_item(it) for it in sim.items
               if isinstance(it, ApiCall) or isinstance(it, Utterance) and it.speaker == "agent"]
    if sim.goal.agent_first:
        raise CtxlabError(f"simulated dialogue {seed}:{index} starts with the agent; pick another")
    return users, actions


def _strip_blank(lines: list[str]) -> list[str]:
    return "\n".join(lines).strip().split("\n")


def transcript_doc(out_md: str | Path, *, model: str | None = None, user_script: str | Path | None = None,
                   replay: tuple[int, int] | None = None, max_turns: int = 20) -> dict[str, Any]:
    """Record one chat (scripted user, real backend with a fresh database) and write it as markdown: with a
    checkpoint (`model` + `user_script`), or replaying a simulated dialogue's rule-agent actions (`replay`)."""
    import tempfile

    from ctxlab.apps.tickets.agent import ScriptedPredictor
    from ctxlab.apps.tickets.chat import run_chat

    out_md = Path(out_md)
    with tempfile.TemporaryDirectory() as tmp:
        if replay is not None:
            users, actions = replay_script(*replay)
            script = Path(tmp) / "user.txt"
            script.write_text("\n".join(users) + "\n", encoding="utf-8")
            predictor = ScriptedPredictor(actions)
            label = f"rule agent replay (simulated dialogue {replay[0]}:{replay[1]})"
            shown_script = "\n".join(users)
        elif model is not None and user_script is not None:
            script, predictor, label = Path(user_script), None, str(model)
            shown_script = Path(user_script).read_text(encoding="utf-8").strip()
        else:
            raise CtxlabError("transcript_doc needs model + user_script, or replay")
        with open(Path(tmp) / "screen.txt", "w", encoding="utf-8") as screen:
            summary = run_chat(label, script, Path(tmp) / "tickets.db", max_turns, predictor=predictor,
                               transcript=Path(tmp) / "chat", out=screen)
        body = (Path(tmp) / "chat.txt").read_text(encoding="utf-8").splitlines()[2:]
    how = ("the agent's actions are the rule-based agent's (ctxlab/apps/tickets/simulate.py) replayed through a "
           "`ScriptedPredictor`: no trained model is involved. Every API call is still validated against the "
           "ontology and executed on the real backend, and its live response is what the next step sees"
           if replay is not None else f"the agent is the checkpoint `{model}` (greedy decoding, NativePredictor)")
    cmd = (f"ctxlab tickets transcript --replay {replay[0]}:{replay[1]} --out {out_md}"
           if replay is not None else f"ctxlab chat tickets {model} --user-script {user_script}")
    md = ["# TicketTalk agent loop: an end-to-end transcript", "",
          "One chat with the agent loop of `ctxlab/apps/tickets/agent.py`: a scripted user (one line per turn), the "
          "SQLite booking backend of `ctxlab/apps/tickets/backend.py` on a fresh database with the default "
          f"catalogue, and {how}.", "",
          "`→` is an API call the agent made (in TM-3 markup it is `<PN>api<PAN>arg<PAV>value…`), `←` the "
          "backend's response as written back into the agent's input (`<PR>api<PRAN>key<PRAV>value…`).", "",
          f"Reproduce: `{cmd}`", "", "## User script", "", "```text", shown_script, "```", "",
          "## Transcript", "", "```text", *_strip_blank([x for x in body if not x.startswith("summary:")]),
          "```", "",
          "Summary: " + ", ".join(f"{k} {v}" for k, v in summary.items() if not k.startswith("transcript")), ""]
    out_md.parent.mkdir(parents=True, exist_ok=True)
    out_md.write_text("\n".join(md), encoding="utf-8")
    return summary


def copy_last_call(prompt: str) -> str:
    """Trivial baseline: repeat the most recent API call of the dialogue (else say nothing)."""
    from ctxlab.tasks.tickettalk.formats import ApiCall

    calls = [it for it in parse_items(prompt) if isinstance(it, ApiCall)]
    return format_items(calls[-1:])


def baselines(data: str | Path, limit: int | None = None) -> dict[str, Any]:
    """Scores of trivial predictors: repeat the last call; always the most frequent reply of the data."""
    from collections import Counter

    from ctxlab.tasks.tickettalk import TASKS

    task = TASKS[0]
    samples = task_samples(data, limit)
    prompts = [task.prompt(s) for s in samples]
    replies = Counter(s.reference["text"] for s in samples if s.reference["text"])
    common = "<A>" + replies.most_common(1)[0][0] if replies else ""
    return {"copy_last_call": score_predictions(samples, [copy_last_call(p) for p in prompts]),
            "most_common_reply": score_predictions(samples, [common] * len(samples))}


def parse_replay(text: str | None) -> tuple[int, int] | None:
    """'SEED:INDEX' → (seed, index); a one-line error otherwise."""
    if text is None:
        return None
    try:
        seed, index = (int(x) for x in text.split(":"))
    except ValueError:
        raise CtxlabError(f"--replay must be SEED:INDEX (two integers), got {text!r}") from None
    return seed, index

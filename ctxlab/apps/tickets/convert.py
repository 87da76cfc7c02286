"""TicketTalk data → the JSONL rows the training loop reads (ctxlab/train/data.py).

- SFT (`ctxlab train sft`): `{prompt, completion}`; prompt = the dialogue so far in the TM-3 history markup,
  oldest first (the tickettalk task's "chronological" prompt: history then head), completion = the agent's next
  action in the same markup (`<A>text`, `<PN>api<PAN>arg<PAV>value…`, or both). The loop appends the end token,
  so a model learns to stop after one action, which is what the agent loop and the task expect.
- DPO (`ctxlab train dpo`): `{prompt, chosen, rejected}` from the turn-level reward labels (reward/*.json): the
  context as prompt, a reward-1 generation as chosen and a reward-0 one as rejected. Only 10 of the 2,936 shipped
  contexts carry both labels, so by default every reward-1 generation is also paired with a synthetic negative
  (`source` says which): a corrupted copy of a good API call (an argument dropped, an argument value swapped for
  another one seen in the data, or the wrong API) or, for a good reply, a reply from another dialogue.
- LM text: whole serialized dialogues separated by the end token (continued pretraining on in-domain dialogues,
  where every agent action of a dialogue is learned in one pass).

Rows must fit `data.seq_len`: the prompt loses its oldest *items* (never half an item) until prompt + completion +
the end token fit `max_tokens` under the given token counter (the model's tokenizer; a rough 3-characters-per-token
estimate when none is given). Rows whose completion alone does not fit are dropped and counted.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from random import Random

from ctxlab.errors import CtxlabError
from ctxlab.tasks.tickettalk.formats import ApiCall, Example, Item, RewardExample, Utterance, format_item, format_items

CountTokens = Callable[[str], int]
END_TEXT = "<|endoftext|>"  # document separator in LM text (a special token of ctxlab.train.scratch tokenizers)


def approx_tokens(text: str) -> int:
    return len(text) // 3 + 1


def action_text(text: str | None, call: ApiCall | None) -> str:
    """An agent action in the history markup: `<A>text`, `<PN>…`, or `<A>text<PN>…`."""
    if text is None and call is None:
        raise CtxlabError("an action needs agent text or an API call")
    return ("" if text is None else format_item(Utterance("agent", text))) + ("" if call is None else format_item(call))


def example_items(ex: Example) -> list[Item]:
    """The dialogue before the target, oldest first: history then head."""
    return [*(ex.history or ()), ex.head]


@dataclass
class Stats:
    rows: int = 0
    truncated: int = 0  # prompts that lost old items
    dropped: int = 0  # rows whose completion did not fit at all

    def as_dict(self) -> dict[str, int]:
        return {"rows": self.rows, "truncated": self.truncated, "dropped": self.dropped}


def fit_prompt(items: Sequence[Item], budget: int, count: CountTokens) -> tuple[str, bool] | None:
    """The longest suffix of `items` whose markup fits `budget` tokens, and whether anything was cut; None when
    not even the newest item fits."""
    full = format_items(items)
    if count(full) <= budget:
        return full, False
    pieces = [format_item(it) for it in items]
    total, start = 0, len(pieces)
    while start > 0 and total + count(pieces[start - 1]) <= budget:
        total += count(pieces[start - 1])
        start -= 1
    while start < len(pieces):  # token counts are not always additive: check the joined text
        text = "".join(pieces[start:])
        if count(text) <= budget:
            return text, True
        start += 1
    return None


def _fit(items: Sequence[Item], completions: Sequence[str], max_tokens: int, count: CountTokens,
         stats: Stats) -> str | None:
    need = max(count(c) for c in completions) + 1  # + the end token the loop appends
    fitted = fit_prompt(items, max_tokens - need, count) if max_tokens - need > 0 else None
    if fitted is None:
        stats.dropped += 1
        return None
    stats.truncated += fitted[1]
    stats.rows += 1
    return fitted[0]


def sft_rows(examples: Iterable[Example], *, max_tokens: int = 512, count_tokens: CountTokens | None = None,
             source: str = "", stats: Stats | None = None) -> list[dict[str, str]]:
    """SFT rows (see the module docstring); `source` is recorded per row (e.g. "train-bc", "sim")."""
    count = count_tokens or approx_tokens
    stats = stats if stats is not None else Stats()
    rows = []
    for ex in examples:
        completion = action_text(ex.target.text, ex.target.call)
        prompt = _fit(example_items(ex), [completion], max_tokens, count, stats)
        if prompt is not None:
            rows.append({"prompt": prompt, "completion": completion, "conversation_id": ex.conversation_id,
                         "source": source})
    return rows


# ------------------------------------------------------------------------------------------------------- DPO


def _rng(*key: object) -> Random:
    return Random(hashlib.sha256(repr(key).encode()).hexdigest())


def corrupt_call(call: ApiCall, rng: Random, values_by_arg: dict[str, list[str]],
                 api_names: Sequence[str]) -> tuple[ApiCall, str] | None:
    """A plausible but wrong version of a good call and what was done to it (None: no way to corrupt it)."""
    kinds = []
    if call.args:
        kinds += ["drop_arg", "swap_value"]
    kinds.append("wrong_api")
    kind = kinds[rng.randrange(len(kinds))]
    args = list(call.args)
    if kind == "swap_value":
        i = rng.randrange(len(args))
        k, v = args[i]
        others = [x for x in values_by_arg.get(k, []) if x.casefold() != v.casefold()]
        if others:
            args[i] = (k, others[rng.randrange(len(others))])
            return ApiCall(call.name, tuple(args)), kind
        kind = "drop_arg"
    if kind == "drop_arg":
        args.pop(rng.randrange(len(args)))
        return ApiCall(call.name, tuple(args)), kind
    names = [n for n in api_names if n != call.name]
    if not names:  # nothing to swap the API for: drop an argument, or give up
        if not args:
            return None
        args.pop(rng.randrange(len(args)))
        return ApiCall(call.name, tuple(args)), "drop_arg"
    return ApiCall(names[rng.randrange(len(names))], call.args), "wrong_api"


def _as_action(item: Item) -> str:
    if isinstance(item, ApiCall):
        return action_text(None, ApiCall(item.name, item.args))
    if isinstance(item, Utterance) and item.speaker == "agent":
        return action_text(item.text, None)
    raise CtxlabError(f"a reward generation must be an agent turn, got {type(item).__name__}")


def dpo_rows(examples: Sequence[RewardExample], *, negatives: str = "synthetic", max_tokens: int = 512,
             count_tokens: CountTokens | None = None, seed: int = 0, stats: Stats | None = None
             ) -> list[dict[str, str]]:
    """DPO rows from reward labels. negatives: "natural" (only contexts labelled both 1 and 0) or "synthetic"
    (also a corrupted / mismatched negative for every reward-1 generation)."""
    if negatives not in ("natural", "synthetic"):
        raise CtxlabError(f"negatives must be 'natural' or 'synthetic', got {negatives!r}")
    count = count_tokens or approx_tokens
    stats = stats if stats is not None else Stats()
    by_ctx: dict[str, list[RewardExample]] = defaultdict(list)
    for ex in examples:
        by_ctx[format_items(ex.context)].append(ex)
    values_by_arg: dict[str, set[str]] = defaultdict(set)
    api_names: set[str] = set()
    bad_replies: list[str] = []
    for ex in examples:
        g = ex.generation
        if isinstance(g, ApiCall):
            api_names.add(g.name)
            for k, v in g.args:
                values_by_arg[k].add(v)
        elif ex.reward == 0 and isinstance(g, Utterance):
            bad_replies.append(g.text)
    vals = {k: sorted(v) for k, v in values_by_arg.items()}
    names = sorted(api_names)
    bad_replies = sorted(set(bad_replies))
    rows = []

    def add(ex: RewardExample, chosen: str, rejected: str, source: str) -> None:
        if chosen == rejected:
            return
        prompt = _fit(ex.context, [chosen, rejected], max_tokens, count, stats)
        if prompt is not None:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                         "conversation_id": ex.conversation_id, "source": source})

    for group in by_ctx.values():
        good = [e for e in group if e.reward >= 1.0]
        bad = [e for e in group if e.reward < 1.0]
        for g in good:
            for b in bad:
                add(g, _as_action(g.generation), _as_action(b.generation), "natural")
            if negatives == "natural":
                continue
            rng = _rng(seed, g.conversation_id)
            gen = g.generation
            if isinstance(gen, ApiCall):
                corrupted = corrupt_call(ApiCall(gen.name, gen.args), rng, vals, names)
                if corrupted is not None:
                    add(g, _as_action(gen), _as_action(corrupted[0]), f"synthetic:{corrupted[1]}")
            elif bad_replies:
                add(g, _as_action(gen), action_text(bad_replies[rng.randrange(len(bad_replies))], None),
                    "synthetic:other_reply")
    return rows


# ---------------------------------------------------------------------------------------------------- LM text


def lm_text(dialogues: Iterable[Sequence[Item]]) -> str:
    """Serialized dialogues, each followed by the end token (a `[[data.text]]` file for `ctxlab train pretrain`)."""
    return "".join(format_items(d) + END_TEXT for d in dialogues)


def example_dialogue(ex: Example) -> list[Item]:
    """A TSV row as one dialogue prefix: history, head and the target action as items."""
    items = example_items(ex)
    if ex.target.text is not None:
        items.append(Utterance("agent", ex.target.text))
    if ex.target.call is not None:
        items.append(ex.target.call)
    return items


# ------------------------------------------------------------------------------------------------------ files


def split_conversations(examples: Sequence[Example], heldout: float, seed: int = 0) -> tuple[list[Example],
                                                                                               list[Example]]:
    """Split rows by conversation (a hash of seed + id), so no dialogue is on both sides."""
    if not 0 <= heldout < 1:
        raise CtxlabError(f"held-out fraction must be in [0, 1), got {heldout}")

    def held(cid: str) -> bool:
        h = int(hashlib.sha256(f"{seed}:{cid}".encode()).hexdigest()[:8], 16)
        return h / 0xFFFFFFFF < heldout

    train = [ex for ex in examples if not held(ex.conversation_id)]
    test = [ex for ex in examples if held(ex.conversation_id)]
    return train, test

"""The real-weight parity numbers: ctxlab vs transformers' GGUF loader in fp32 on the prompts of
tests/test_real_models.py (max |logit diff| per prompt, 64 greedy tokens, tokenizer on the multilingual text).

Run: .venv/bin/python bench/parity_real.py   (prints a markdown table; the test asserts the same ≤ 1e-4)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxlab.engine import SamplingParams, generate  # noqa: E402
from ctxlab.models.loading import load_model  # noqa: E402
from ctxlab.realmodels import REAL_MODELS, locate  # noqa: E402
from ctxlab.tokenizer import Tokenizer  # noqa: E402
from tests.test_real_models import MULTILINGUAL, _prompts  # noqa: E402


def main() -> None:
    import transformers

    torch.set_num_threads(1)
    print("| model | prompt tokens | max abs logit diff | max abs logit | 64 greedy ids equal | tokenizer equal |")
    print("|---|---|---|---|---|---|")
    for name in REAL_MODELS:
        path = locate(name)
        ref = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                                dtype=torch.float32).eval()
        ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        ours, tok = load_model(name).model, Tokenizer.from_dir(path)
        same_tok = tok.encode(MULTILINGUAL) == ref_tok(MULTILINGUAL)["input_ids"]
        prompts = _prompts(name, tok)
        gen = generate(ours, [prompts[0]], SamplingParams(max_new_tokens=64), eos_ids=())[0].ids
        with torch.no_grad():
            out = ref.generate(torch.tensor([prompts[0]]), max_new_tokens=64, min_new_tokens=64, do_sample=False,
                               eos_token_id=None, pad_token_id=tok.pad_id)[0, len(prompts[0]):].tolist()
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids])
            with torch.no_grad():
                a, b = ours(x)[0], ref(x).logits
            extra = f" | {gen == out} | {same_tok}" if i == 0 else " | | "
            print(f"| {name} | {len(ids)} | {(a - b).abs().max().item():.3g} | {b.abs().max().item():.1f}{extra} |")
        del ref, ours


if __name__ == "__main__":
    main()

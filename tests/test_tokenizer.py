"""ctxlab.tokenizer against transformers' fast tokenizer on tiny byte-level BPE tokenizers trained in the test."""

import json
from datetime import datetime
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from ctxlab.errors import CtxlabError
from ctxlab.tokenizer import IncrementalDecoder, Tokenizer

transformers = pytest.importorskip("transformers")

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello there!",
    "A naïve café owner in 東京 serves crème brûlée and jalapeño soup.",
    "Qwen and Llama models chat with users: system, user, assistant, tool.",
    "Numbers 0123456789 and symbols {}[]()<>:;\"'.,!? ~ # $ % & * + - = / \\ |",
    "Über straße façade résumé coöperate — em dash … ellipsis “quotes”.",
    "日本語のテキストと東京タワー、京都。Привет мир! مرحبا 😀 🚀",
]

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

# Modelled on Qwen3's template: tools block (tojson), namespace scan for the last user query, reasoning_content,
# tool calls/responses and the enable_thinking switch.
QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions.\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content if message.content is string else '' %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}
            {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') }}
            {{- '\n</think>\n\n' + content.lstrip('\n') }}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}{{- '\n' }}{%- endif %}
                {%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
                {{- '<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
                {{- tool_call.arguments if tool_call.arguments is string else tool_call.arguments | tojson }}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
        {{- '\n<tool_response>\n' + content + '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\n' }}{%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# Llama-3's template, verbatim: BOS comes from the template, so encoding the chat must not add it again.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

WEATHER = {"name": "get_weather", "description": "Wetter in einer Stadt (°C), 東京",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
TOOLS = [{"type": "function", "function": WEATHER}]
CHATS = [
    [{"role": "user", "content": "Hello there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Café in 東京?"}],
    [
        {"role": "user", "content": "naïve question"},
        {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA naïve answer."},
        {"role": "user", "content": "And again?"},
        {"role": "assistant", "content": "Sure.", "reasoning_content": "thinking 東京"},
    ],
    [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in 東京?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "東京"}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
    ],
]
TEXTS = ["Hello world", "naïve café 東京", "  leading spaces\nand\ttabs ", "😀🚀 emoji",
         "<|im_start|>user\nhi<|im_end|>", ""]


def _train(specials: list[str], corpus: list[str] = CORPUS) -> HFTokenizer:
    tk = HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=256 + len(specials) + 300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus, trainer)
    return tk


def _save(tk: HFTokenizer, path: Path, template, **special) -> tuple[Tokenizer, object]:
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **special)
    hf.chat_template = template
    hf.save_pretrained(str(path))
    return Tokenizer.from_dir(path), transformers.PreTrainedTokenizerFast.from_pretrained(str(path))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    tk = _train(QWEN_SPECIALS)
    tk.add_tokens(["<think>", "</think>"])  # non-special added tokens, as in Qwen3
    return _save(tk, tmp_path_factory.mktemp("qwen"), QWEN3_TEMPLATE, eos_token="<|im_end|>",
                 pad_token="<|endoftext|>")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tk = _train(LLAMA_SPECIALS)
    bos = tk.token_to_id("<|begin_of_text|>")
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return _save(tk, tmp_path_factory.mktemp("llama"), LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>",
                 eos_token="<|eot_id|>")


@pytest.mark.parametrize("name", ["qwen", "llama"])
def test_encode_decode_match_transformers(name, request):
    ours, hf = request.getfixturevalue(name)
    for add in (True, False):
        assert ours.encode_batch(TEXTS, add_special_tokens=add) == hf(TEXTS, add_special_tokens=add)["input_ids"]
        for text in TEXTS:
            ids = ours.encode(text, add_special_tokens=add)
            assert ids == hf.encode(text, add_special_tokens=add)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ours.encode("naïve café 東京", add_special_tokens=False)) == "naïve café 東京"
    assert ours.vocab_size == len(hf)
    for token in ("<|im_end|>", "<think>", "<|eot_id|>", "Hello", "no-such-token"):
        assert ours.token_to_id(token) == hf.convert_tokens_to_ids(token)


def test_post_processor_adds_bos(llama, qwen):
    ours, hf = llama
    bos = ours.token_to_id("<|begin_of_text|>")
    assert ours.bos_id == bos == hf.bos_token_id
    assert ours.encode("Hello")[0] == bos and ours.encode("Hello", add_special_tokens=False)[0] != bos
    assert ours.encode("Hello") == hf("Hello")["input_ids"]
    assert ours.adds_bos and not qwen[0].adds_bos
    assert ours.decode(ours.encode("Hello"), skip_special_tokens=True) == "Hello"


def test_special_ids(qwen, llama):
    ours, hf = qwen
    assert ours.eos_token_ids == (hf.eos_token_id,) == (ours.token_to_id("<|im_end|>"),)
    assert ours.pad_id == hf.pad_token_id == ours.token_to_id("<|endoftext|>")
    assert ours.bos_id is None and hf.bos_token_id is None
    assert llama[0].eos_token_ids == (llama[0].token_to_id("<|eot_id|>"),)


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"enable_thinking": True}, {"tools": TOOLS}])
@pytest.mark.parametrize("gen", [True, False])
def test_qwen3_chat_matches_transformers(qwen, chat, kwargs, gen):
    ours, hf = qwen
    text = ours.apply_chat_template(chat, add_generation_prompt=gen, **kwargs)
    assert text == hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=False, **kwargs)
    ids = ours.encode_chat(chat, add_generation_prompt=gen, **kwargs)
    assert ids == hf.apply_chat_template(chat, add_generation_prompt=gen, tokenize=True, return_dict=False, **kwargs)
    assert text.count("<|im_start|>") == ids.count(ours.token_to_id("<|im_start|>"))


def test_qwen3_template_features(qwen):
    ours, _ = qwen
    chat = CHATS[1]
    off = ours.apply_chat_template(chat, enable_thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ours.apply_chat_template(chat).endswith("<|im_start|>assistant\n")
    assert not ours.apply_chat_template(chat, add_generation_prompt=False).endswith("assistant\n")
    with_tools = ours.apply_chat_template(chat, tools=TOOLS)
    assert '"description": "Wetter in einer Stadt (°C), 東京"' in with_tools  # tojson keeps non-ASCII
    assert "<think>\nthinking 東京\n</think>\n\nSure." in ours.apply_chat_template(CHATS[2])
    # Reasoning passed as `thinking` or `reasoning` reaches templates as `reasoning_content` (transformers 5 aliases)
    for field in ("thinking", "reasoning"):
        chat = CHATS[2][:-1] + [{"role": "assistant", "content": "Sure.", field: "thinking 東京"}]
        assert ours.apply_chat_template(chat) == ours.apply_chat_template(CHATS[2])


@pytest.mark.parametrize("chat", CHATS[:3])
def test_llama3_chat_bos_from_template_only(llama, chat):
    ours, hf = llama
    text = ours.apply_chat_template(chat)
    assert text.startswith("<|begin_of_text|><|start_header_id|>")
    assert text == hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = ours.encode_chat(chat)
    assert ids == hf.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids.count(ours.bos_id) == 1 and ids[0] == ours.bos_id


def test_jinja_environment_matches_transformers(qwen):
    ours, hf = qwen
    template = (
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% generation %}{{ m.content }}"
        "{% endgeneration %}{% endfor %}|{{ messages | tojson(indent=2) }}|{{ {'k': '<é>'} | tojson }}"
        "|{{ eos_token }}{{ pad_token }}|{{ strftime_now('%Y') }}|{% set d = dict(a=1) %}{{ d.a }}\n"
        "  {% for m in messages %}\n    {% if m.role == 'user' %}\n  <{{ m.role }}>\n    {% endif %}\n  {% endfor %}\n"
    )  # the last line exercises trim_blocks/lstrip_blocks
    chat = CHATS[1] + [{"role": "user", "content": "third"}]
    text = ours.apply_chat_template(chat, template=template)
    assert text == hf.apply_chat_template(chat, chat_template=template, tokenize=False, add_generation_prompt=True)
    assert "third" not in text.split("|")[0] and "<é>" in text and str(datetime.now().year) in text
    assert text.endswith("1\n  <user>\n  <user>\n")
    with pytest.raises(CtxlabError, match="roles must alternate"):
        ours.apply_chat_template(chat, template="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(CtxlabError, match="does not compile"):
        ours.apply_chat_template(chat, template="{% if %}")
    with pytest.raises(CtxlabError, match="chat template error"):  # e.g. list content where a string is expected
        ours.apply_chat_template(chat, template="{{ messages[0].content + 1 }}")
    with pytest.raises(CtxlabError, match="chat template error"):  # sandbox: no underscore attributes
        ours.apply_chat_template(chat, template="{% set ns = namespace(_x=1) %}")


def _dir_with(tmp_path: Path, src: Path, **files) -> Path:
    out = tmp_path / "tok"
    out.mkdir()
    (out / "tokenizer.json").write_text((src / "tokenizer.json").read_text())
    for name, content in files.items():
        name = name.replace("__", ".")
        (out / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return out


def test_template_layouts_and_generation_config(qwen, tmp_path):
    ours, _ = qwen
    src = Path(ours.name)
    eos = {"__type": "AddedToken", "content": "<|im_end|>", "lstrip": False, "rstrip": False, "special": True}
    config = {"eos_token": eos, "pad_token": "<|endoftext|>", "bos_token": None,
              "chat_template": [{"name": "default", "template": "D{{ messages[0].content }}"},
                                {"name": "tool_use", "template": "T{{ tools | length if tools else 0 }}"}]}
    gen = {"bos_token_id": 0, "eos_token_id": [ours.token_to_id("<|endoftext|>"), ours.token_to_id("<|im_end|>")]}
    d = _dir_with(tmp_path, src, tokenizer_config__json=config, generation_config__json=gen)
    tok = Tokenizer.from_dir(d)
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(d))
    chat = CHATS[0]
    assert tok.apply_chat_template(chat) == "DHello there!" == hf.apply_chat_template(chat, tokenize=False)
    assert tok.apply_chat_template(chat, tools=TOOLS) == "T1" == hf.apply_chat_template(chat, tools=TOOLS,
                                                                                          tokenize=False)
    assert tok.apply_chat_template(chat, template="tool_use") == "T0"
    # generation_config's eos list first, then the tokenizer's eos (deduplicated); bos falls back to generation_config
    assert tok.eos_token_ids == (ours.token_to_id("<|endoftext|>"), ours.token_to_id("<|im_end|>"))
    assert tok.bos_id == 0 and tok.pad_id == ours.token_to_id("<|endoftext|>")
    # chat_template.jinja beats the config entry; chat_template.json is read when no .jinja file exists
    (d / "chat_template.jinja").write_text("J{{ bos_token is defined }}")
    assert Tokenizer.from_dir(d).apply_chat_template(chat) == "JFalse"
    (d / "chat_template.jinja").unlink()
    (d / "chat_template.json").write_text(json.dumps({"chat_template": "S{{ eos_token }}"}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    tok = Tokenizer.from_dir(d)
    assert tok.apply_chat_template(chat) == "S<|im_end|>"
    assert tok.eos_token_ids == (7, ours.token_to_id("<|im_end|>"))


def test_special_tokens_map_and_add_eos_flag(qwen, tmp_path):
    ours, _ = qwen
    # add_eos_token in the config does not override tokenizer.json's post-processor (transformers 5 ignores it too),
    # and a truncation setting saved in tokenizer.json is not applied (transformers encodes without truncation).
    d = _dir_with(tmp_path, Path(ours.name), tokenizer_config__json={"add_eos_token": True},
                  special_tokens_map__json={"eos_token": "<|im_end|>", "bos_token": "<|endoftext|>"})
    backend = HFTokenizer.from_file(str(d / "tokenizer.json"))
    backend.enable_truncation(max_length=3)
    backend.save(str(d / "tokenizer.json"))
    tok, hf = Tokenizer.from_dir(d), transformers.PreTrainedTokenizerFast.from_pretrained(str(d))
    assert tok.add_eos_token is True
    text = "Hello world, a longer text than three tokens"
    assert tok.encode(text) == hf(text)["input_ids"] == ours.encode(text) and len(ours.encode(text)) > 3
    assert tok.bos_id == hf.bos_token_id == ours.token_to_id("<|endoftext|>")
    assert tok.eos_token_ids == (hf.eos_token_id,)


@pytest.mark.parametrize("name", ["qwen", "llama"])
def test_incremental_decoder_reproduces_decode(name, request):
    ours, _ = request.getfixturevalue(name)
    text = "naïve café 東京! 日本語のテキスト 😀🚀 Привет, and crème brûlée."
    ids = ours.encode(text)
    # Honest test: some single tokens are fragments of a multi-byte character.
    assert any("\ufffd" in ours.decode([i]) for i in ids)
    for skip in (True, False):
        dec = IncrementalDecoder(ours, skip_special_tokens=skip)
        pieces = [dec.add(i) for i in ids]
        assert all("\ufffd" not in p for p in pieces)
        assert "".join(pieces) + dec.flush() == ours.decode(ids, skip_special_tokens=skip)
    # Seeded with the prompt, only the continuation's text comes out.
    prompt, gen = ids[:7], ids[7:]
    dec = IncrementalDecoder(ours, prompt_ids=prompt)
    out = "".join(dec.add(i) for i in gen) + dec.flush()
    assert out == ours.decode(ids, skip_special_tokens=True)[len(ours.decode(prompt, skip_special_tokens=True)):]


def test_incremental_decoder_leading_space_and_truncated_char(tmp_path):
    # SentencePiece-style (Metaspace) decoders strip the first token's leading space; the window keeps it.
    tk = HFTokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False))
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_dir(tmp_path)
    ids = tok.encode("hello world over the dog")
    dec = IncrementalDecoder(tok)
    assert "".join(dec.add(i) for i in ids) + dec.flush() == tok.decode(ids) == "hello world over the dog"
    # A stream that stops mid-character flushes the same replacement character decode() gives.
    byte_tok = Tokenizer.from_dir(_ascii_byte_level_dir(tmp_path))
    ids = byte_tok.encode("東", add_special_tokens=False)
    assert len(ids) > 1
    dec = IncrementalDecoder(byte_tok)
    assert [dec.add(i) for i in ids[:-1]] == [""] * (len(ids) - 1)
    assert dec.flush() == byte_tok.decode(ids[:-1])


def _ascii_byte_level_dir(tmp_path: Path) -> Path:
    # Trained on ASCII only, so every CJK character is several single-byte tokens.
    out = tmp_path / "bytes"
    out.mkdir()
    tk = _train(QWEN_SPECIALS, ["plain ascii only text"])
    tk.save(str(out / "tokenizer.json"))
    return out


def test_errors(qwen, tmp_path):
    ours, _ = qwen
    with pytest.raises(CtxlabError, match="no tokenizer.json in"):
        Tokenizer.from_dir(tmp_path)
    with pytest.raises(CtxlabError, match="not found"):
        Tokenizer.from_dir(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CtxlabError, match="cannot load"):
        Tokenizer.from_dir(tmp_path)
    d = _dir_with(tmp_path, Path(ours.name), tokenizer_config__json="{\"eos_token\": ")
    with pytest.raises(CtxlabError, match="tokenizer_config.json"):
        Tokenizer.from_dir(d)
    (d / "tokenizer_config.json").write_text("{}")
    tok = Tokenizer.from_dir(d)
    assert not tok.has_chat_template
    with pytest.raises(CtxlabError, match="no chat template"):
        tok.apply_chat_template(CHATS[0])
    with pytest.raises(CtxlabError, match="non-empty"):
        ours.apply_chat_template([])
    with pytest.raises(CtxlabError, match="role"):
        ours.apply_chat_template([{"content": "no role"}])
    (d / "generation_config.json").write_text("[1, 2")
    with pytest.raises(CtxlabError, match="generation_config.json"):
        Tokenizer.from_dir(d)

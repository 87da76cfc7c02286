"""Hugging Face tokenizers and chat templates without transformers: `tokenizer.json` through the `tokenizers` library,
plus the side files (`tokenizer_config.json`, chat templates, `generation_config.json`) that transformers reads.

The behaviour follows transformers' fast tokenizers (5.x): `encode` honours the post-processor in `tokenizer.json`
(`add_bos_token`/`add_eos_token` in the config are recorded but, as in transformers 5, do not override it), and
`apply_chat_template` renders with the same sandboxed jinja2 environment and variables as `apply_chat_template`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken
from tokenizers import Tokenizer as _HFTokenizer

from ctxlab.errors import CtxlabError

# The named special tokens transformers passes to every chat template (plus any model-specific `*_token` keys).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names a message's reasoning may come under; templates (Qwen3) read `reasoning_content`, gpt-oss reads `thinking`.
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CHAT_TEMPLATE_DIR = "additional_chat_templates"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CtxlabError(f"cannot read {path}: {e}") from None


def _token_str(value: Any) -> str | None:
    """A special token as stored in HF configs: a string, an AddedToken dict ({"content": ...}) or null."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _added_token(spec: Mapping[str, Any]) -> AddedToken:
    keys = ("single_word", "lstrip", "rstrip", "normalized", "special")
    return AddedToken(spec["content"], **{k: bool(spec[k]) for k in keys if k in spec})


class Tokenizer:
    """A checkpoint's tokenizer: encode/decode, special ids and chat templates. Build it with `from_dir`."""

    def __init__(
        self,
        backend: _HFTokenizer,
        *,
        config: Mapping[str, Any] | None = None,
        chat_template: str | dict[str, str] | None = None,
        generation_config: Mapping[str, Any] | None = None,
        name: str = "",
    ):
        self._tk = backend
        self.config = dict(config or {})
        self.name = name
        self.chat_template = chat_template
        # transformers' __call__ runs without truncation or padding unless asked; a long-context lab must too.
        self._tk.no_truncation()
        self._tk.no_padding()
        self._tk.encode_special_tokens = bool(self.config.get("split_special_tokens", False))
        # Named special tokens (bos_token, ..., model-specific ones like image_token), as strings.
        self.special_tokens: dict[str, str] = {}
        for key, value in self.config.items():
            if key in SPECIAL_TOKEN_KEYS or key.endswith("_token"):
                token = _token_str(value)
                if token is not None:
                    self.special_tokens[key] = token
        extra = self.config.get("extra_special_tokens")
        if isinstance(extra, Mapping):
            self.special_tokens.update({k: t for k, v in extra.items() if (t := _token_str(v)) is not None})
        self._add_missing_tokens()
        self.add_bos_token: bool | None = self.config.get("add_bos_token")
        self.add_eos_token: bool | None = self.config.get("add_eos_token")
        self.generation_config = dict(generation_config or {})

    def _add_missing_tokens(self) -> None:
        # transformers adds tokens named in the config (added_tokens_decoder, special tokens) that tokenizer.json lacks.
        decoder = self.config.get("added_tokens_decoder")
        specs = [v for _, v in sorted(decoder.items(), key=lambda kv: int(kv[0]))] if isinstance(decoder, dict) else []
        specs += [{"content": t, "special": True} for t in self.special_tokens.values()]
        for spec in specs:
            if isinstance(spec, Mapping) and isinstance(spec.get("content"), str):
                if self._tk.token_to_id(spec["content"]) is None:
                    token = _added_token(spec)
                    (self._tk.add_special_tokens if token.special else self._tk.add_tokens)([token])

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Build the tokenizer, chat template and special ids a GGUF file's `tokenizer.ggml.*` metadata describes."""
        from ctxlab.gguf_file import open_gguf
        from ctxlab.tokenizer_gguf import gguf_tokenizer

        backend, config, template, gen = gguf_tokenizer(open_gguf(path))
        return cls(backend, config=config, chat_template=template, generation_config=gen, name=str(path))

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load `tokenizer.json` and the side files transformers reads from a checkpoint directory (a `.gguf` path:
        its metadata's tokenizer, see `from_gguf`)."""
        root = Path(path)
        if root.suffix.lower() == ".gguf" and root.is_file():
            return cls.from_gguf(root)
        if not root.is_dir():
            raise CtxlabError(f"tokenizer directory not found: {root}")
        tok_file = root / "tokenizer.json"
        if not tok_file.is_file():
            raise CtxlabError(
                f"no tokenizer.json in {root}; ctxlab needs a fast-tokenizer file (re-save a SentencePiece-only "
                "checkpoint with transformers' save_pretrained, or download tokenizer.json from the model repo)"
            )
        try:
            backend = _HFTokenizer.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise CtxlabError(f"cannot load {tok_file}: {e}") from None

        config: dict[str, Any] = {}
        if (root / "tokenizer_config.json").is_file():
            config = _read_json(root / "tokenizer_config.json")
            if not isinstance(config, dict):
                raise CtxlabError(f"{root / 'tokenizer_config.json'} is not a JSON object")
        # Legacy special_tokens_map.json: transformers reads it only when the config has no added_tokens_decoder.
        if (root / "special_tokens_map.json").is_file() and "added_tokens_decoder" not in config:
            stm = _read_json(root / "special_tokens_map.json")
            if isinstance(stm, dict):
                config.update({k: v for k, v in stm.items() if k.endswith("_token") and _token_str(v) is not None})

        gen: dict[str, Any] = {}
        if (root / "generation_config.json").is_file():
            gen = _read_json(root / "generation_config.json")
            if not isinstance(gen, dict):
                raise CtxlabError(f"{root / 'generation_config.json'} is not a JSON object")
        return cls(backend, config=config, chat_template=_load_chat_template(root, config), generation_config=gen,
                   name=str(root))

    def fingerprint(self) -> str:
        """SHA-256 of the tokenizer's full definition (vocabulary, merges, pipeline, added tokens): a cache key."""
        import hashlib

        return hashlib.sha256(self._tk.to_str().encode()).hexdigest()

    def save(self, out_dir: str | Path) -> None:
        """Write tokenizer.json, tokenizer_config.json and chat_template.jinja as transformers reads them (used to
        export GGUF-derived models as HF directories)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._tk.save(str(out / "tokenizer.json"))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens}
        for key in ("add_bos_token", "add_eos_token"):
            if self.config.get(key) is not None:
                config[key] = bool(self.config[key])
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
        if isinstance(self.chat_template, str):
            (out / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")

    # ---- encode / decode -------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tk.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def count_tokens(self, text: str) -> int:
        """Number of tokens in `text` without special tokens (a `CountTokens` for tasks)."""
        return len(self._tk.encode(text, add_special_tokens=False).ids)

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)

    @property
    def vocab_size(self) -> int:
        """Tokens incl. added ones (transformers' `len(tokenizer)`); the model's embedding may have more rows."""
        return self._tk.get_vocab_size(with_added_tokens=True)

    # ---- special ids -----------------------------------------------------------------------------------------

    def _special_id(self, key: str) -> int | None:
        token = self.special_tokens.get(key)
        return self._tk.token_to_id(token) if token is not None else None

    def _gen_ids(self, key: str) -> list[int]:
        value = self.generation_config.get(key)
        values = value if isinstance(value, list) else [value]
        return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Ids that end generation: generation_config's eos ids (int or list) plus the tokenizer's eos token."""
        ids = self._gen_ids("eos_token_id")
        tok = self._special_id("eos_token")
        if tok is not None:
            ids.append(tok)
        return tuple(dict.fromkeys(ids))

    @property
    def bos_id(self) -> int | None:
        """The tokenizer's bos token id, else generation_config's. Whether encode() adds it is `adds_bos`."""
        tok = self._special_id("bos_token")
        return tok if tok is not None else next(iter(self._gen_ids("bos_token_id")), None)

    @property
    def pad_id(self) -> int | None:
        tok = self._special_id("pad_token")
        return tok if tok is not None else next(iter(self._gen_ids("pad_token_id")), None)

    @property
    def adds_bos(self) -> bool:
        """Whether `encode(text)` (with special tokens) starts with the bos id, per the post-processor."""
        ids = self.encode("", add_special_tokens=True)
        return bool(ids) and self.bos_id is not None and ids[0] == self.bos_id

    # ---- chat templates --------------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    def get_chat_template(self, template: str | None = None, tools: Sequence[Any] | None = None) -> str:
        """The template source: `template` may be a template name (multi-template models) or jinja source."""
        ct = self.chat_template
        if isinstance(ct, dict):
            if template is not None:
                return ct.get(template, template)
            if tools is not None and "tool_use" in ct:
                return ct["tool_use"]
            if "default" in ct:
                return ct["default"]
            raise CtxlabError(f"{self.name or 'tokenizer'} has several chat templates and no default; pick one of "
                              f"{sorted(ct)}")
        if template is not None:
            return template
        if not ct:
            raise CtxlabError(f"{self.name or 'this model'} has no chat template; use plain (non-chat) prompting "
                              "or pass a template")
        return ct

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: Sequence[Any] | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        template: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Render a conversation as transformers' `apply_chat_template(tokenize=False)` does.

        Extra kwargs (e.g. `enable_thinking=False` for Qwen3) are template variables; they override special tokens.
        """
        source = self.get_chat_template(template, tools)
        if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
            raise CtxlabError("a chat needs a non-empty list of messages")
        chat = []
        for m in messages:
            if not isinstance(m, Mapping) or "role" not in m:
                raise CtxlabError(f"chat messages must be dicts with a 'role', got {m!r:.80}")
            m = {k: v for k, v in m.items() if v is not None}  # as transformers: drop None fields (content=None)
            reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        variables = {**self.special_tokens, **kwargs}
        try:
            return render_bounded(
                compile_chat_template(source), messages=chat, tools=list(tools) if tools is not None else None,
                documents=list(documents) if documents is not None else None,
                add_generation_prompt=add_generation_prompt, **variables,
            )
        except (jinja2.TemplateError, TypeError, ValueError) as e:  # raise_exception, or messages the template rejects
            raise CtxlabError(f"chat template error: {e}") from None

    def encode_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                    **kwargs: Any) -> list[int]:
        """Token ids of the rendered chat. Like transformers, no special tokens are added on top of the template's."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt, **kwargs),
                           add_special_tokens=False)


def _load_chat_template(root: Path, config: Mapping[str, Any]) -> str | dict[str, str] | None:
    """Template files (chat_template.jinja, additional_chat_templates/*.jinja, chat_template.json) beat the config."""
    templates: dict[str, str] = {}
    if (root / "chat_template.jinja").is_file():
        templates["default"] = (root / "chat_template.jinja").read_text(encoding="utf-8")
    if (root / _CHAT_TEMPLATE_DIR).is_dir():
        for f in sorted((root / _CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
    if not templates and (root / "chat_template.json").is_file():
        value = _read_json(root / "chat_template.json")
        raw = value.get("chat_template") if isinstance(value, dict) else None
        if raw is not None:
            return _normalise_templates(raw, root / "chat_template.json")
    if templates:
        return templates["default"] if list(templates) == ["default"] else templates
    raw = config.get("chat_template")
    return _normalise_templates(raw, root / "tokenizer_config.json") if raw is not None else None


def _normalise_templates(raw: Any, where: Path) -> str | dict[str, str]:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and all(isinstance(t, Mapping) and {"name", "template"} <= t.keys() for t in raw):
        return {str(t["name"]): str(t["template"]) for t in raw}
    raise CtxlabError(f"chat_template in {where} must be a string or a list of {{name, template}} objects")


# ---- the jinja environment (a copy of transformers' _cached_compile_jinja_template) -----------------------------


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; here it renders as-is."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    """`dict(...)` in templates without exposing the type itself (no attribute-based escapes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """jinja's `namespace` that refuses underscore-prefixed attributes (no reach into CPython internals)."""

    def __init__(*args: Any, **kwargs: Any):  # same signature trick as jinja's Namespace: `namespace(self=...)` works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attributes ({name!r})")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Unlike jinja's own tojson: no HTML escaping, non-ASCII kept, indent/separators exposed.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


# Chat templates are untrusted code: besides the sandbox, their output and time are bounded.
MAX_RENDER_CHARS = 64 << 20  # far above any real prompt (a 1M-token context is ~4M characters)
MAX_RENDER_SECONDS = 10.0


class _BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` refused when their result would be huge ('x' * 10**10, 9**9**9)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDER_CHARS:
                    raise jinja2.exceptions.SecurityError("chat template output too large ('*' repetition)")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 4096:
            raise jinja2.exceptions.SecurityError("chat template arithmetic too large ('**')")
        return super().call_binop(context, operator, left, right)


def render_bounded(template: jinja2.Template, **variables: Any) -> str:
    """Render with at most MAX_RENDER_CHARS of output and MAX_RENDER_SECONDS of time (an alarm interrupts a template
    that loops without output when this runs in the main thread)."""
    import signal
    import threading
    import time

    deadline = time.monotonic() + MAX_RENDER_SECONDS
    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def expired(*_: Any) -> None:
        raise jinja2.exceptions.SecurityError(f"chat template took longer than {MAX_RENDER_SECONDS:g} s")

    previous = signal.signal(signal.SIGALRM, expired) if timed else None
    if timed:
        signal.setitimer(signal.ITIMER_REAL, MAX_RENDER_SECONDS)
    try:
        out, size = [], 0
        for piece in template.generate(**variables):
            size += len(piece)
            if size > MAX_RENDER_CHARS:
                raise jinja2.exceptions.SecurityError(f"chat template output exceeds {MAX_RENDER_CHARS} characters")
            if time.monotonic() > deadline:
                expired()
            out.append(piece)
        return "".join(out)
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


@lru_cache(maxsize=32)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile a chat template in transformers' sandbox (chat templates from the Hub are untrusted code)."""
    env = _BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_TemplateDict(),
                       namespace=_TemplateNamespace)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise CtxlabError(f"chat template does not compile: {e}") from None


# ---- streaming detokenization ---------------------------------------------------------------------------------


class IncrementalDecoder:
    """Turns a stream of generated ids into text pieces whose concatenation equals `decode(all ids)`.

    Each step decodes a short window twice (with and without the new ids) and emits the difference, so decoders
    that strip a leading space (SentencePiece) stay right; a piece ending in U+FFFD is an incomplete UTF-8
    character (byte-level BPE splits multi-byte characters across tokens) and is held back until completed.
    `prompt_ids` seeds the window with the prompt's tail (never emitted) so the first token's spacing is right.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True, prompt_ids: Sequence[int] = ()):
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = list(prompt_ids)[-6:]
        self._prefix = 0  # window start: text before `_read` has already been emitted
        self._read = len(self._ids)

    def _decode(self, start: int, end: int | None = None) -> str:
        return self._tok.decode(self._ids[start:end], skip_special_tokens=self._skip)

    def add(self, token_id: int) -> str:
        """Append one id; return the newly completed text ('' while a character is still incomplete)."""
        self._ids.append(int(token_id))
        prefix_text = self._decode(self._prefix, self._read)
        new_text = self._decode(self._prefix)
        if len(new_text) <= len(prefix_text) or new_text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return new_text[len(prefix_text):]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character decodes to U+FFFD, as decode() would)."""
        prefix_text = self._decode(self._prefix, self._read)
        new_text = self._decode(self._prefix)
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text):]

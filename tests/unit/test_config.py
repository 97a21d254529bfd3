"""Tests for orchestrator.config and orchestrator.backends.config: the backends file, env
overrides and validation messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from orchestrator.backends.config import (
    DEFAULT_BACKENDS,
    BackendConfig,
    backends_path,
    load_backends,
)
from orchestrator.config import load_yaml, validate_config
from orchestrator.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
default: fake
backends:
  fake:
    kind: fake
    options: {seed: 3}
  vllm-server:
    kind: openai
    base_url: http://127.0.0.1:8001/v1
    model: smollm2
    max_concurrency: 32
    pricing: {prompt: 0.5, completion: 1.5}
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("TTC_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str, name: str = "backends.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_backends_from_file(tmp_path: Path) -> None:
    cfg = load_backends(write(tmp_path, GOOD))
    assert cfg.default == "fake"
    assert list(cfg.backends) == ["fake", "vllm-server"]
    fake, server = cfg.backends["fake"], cfg.backends["vllm-server"]
    assert fake.kind == "fake" and fake.options == {"seed": 3}
    assert fake.max_concurrency == 16 and fake.timeout == 120.0 and fake.max_retries == 4
    assert server.max_concurrency == 32 and server.base_url == "http://127.0.0.1:8001/v1"
    assert server.pricing.prompt == 0.5 and server.pricing.completion == 1.5
    assert server.server == "auto" and server.capabilities is None


def test_load_backends_accepts_str_path(tmp_path: Path) -> None:
    assert load_backends(str(write(tmp_path, GOOD))).default == "fake"


def test_repo_backends_file_is_valid() -> None:
    cfg = load_backends(REPO / "configs" / "backends.yaml")
    assert cfg.default in cfg.backends
    assert {"local", "fake"} <= set(cfg.backends)


def test_bad_value_names_file_field_value_and_known_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path, "default: fake\nbackends:\n  fake:\n    kind: fake\n    max_concurrency: -1\n"
    )
    with pytest.raises(ConfigError) as info:
        load_backends(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "backends.fake.max_concurrency" in msg
    assert "-1" in msg
    assert "greater than or equal to 1" in msg


def test_unknown_field_lists_the_fields_of_its_own_model(tmp_path: Path) -> None:
    path = write(tmp_path, "default: fake\nbackends:\n  fake:\n    kind: fake\n    colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_backends(path)
    msg = str(info.value)
    assert str(path) in msg and "backends.fake.colour" in msg and "'red'" in msg
    assert "Extra inputs are not permitted" in msg
    known = msg.split("Known fields:")[1]
    # the fields of a backend, where the unknown field was written, not of the file's top level
    for name in ("kind", "model", "base_url", "max_concurrency", "pricing", "options"):
        assert name in known


def test_unknown_top_level_field(tmp_path: Path) -> None:
    path = write(tmp_path, "default: fake\nbackend: {}\nbackends:\n  fake: {kind: fake}\n")
    with pytest.raises(ConfigError) as info:
        load_backends(path)
    msg = str(info.value)
    assert "backend: Extra inputs are not permitted" in msg
    assert "Known fields: default, backends" in msg


def test_missing_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "default: x\nbackends:\n  x:\n    model: m\n")
    with pytest.raises(ConfigError, match=r"backends\.x\.kind: Field required"):
        load_backends(path)


def test_default_must_be_declared(tmp_path: Path) -> None:
    path = write(tmp_path, "default: missing\nbackends:\n  fake: {kind: fake}\n  b: {kind: fake}\n")
    with pytest.raises(ConfigError) as info:
        load_backends(path)
    msg = str(info.value)
    assert str(path) in msg and "'missing'" in msg and "declared: b, fake" in msg


def test_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_backends(path)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "default: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert str(path) in str(info.value) and "invalid YAML" in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read .*nope\.yaml"):
        load_backends(tmp_path / "nope.yaml")


def test_env_default_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_DEFAULT_BACKEND", "vllm-server")
    assert load_backends(write(tmp_path, GOOD)).default == "vllm-server"
    monkeypatch.setenv("TTC_DEFAULT_BACKEND", "nope")
    with pytest.raises(ConfigError, match="'nope' is not declared"):
        load_backends(write(tmp_path, GOOD))


def test_env_field_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_BACKEND__VLLM_SERVER__MAX_CONCURRENCY", "8")
    monkeypatch.setenv("TTC_BACKEND__VLLM_SERVER__BASE_URL", "http://other:9/v1")
    monkeypatch.setenv("TTC_BACKEND__FAKE__OPTIONS", "{seed: 9, latency: 0.5}")
    cfg = load_backends(write(tmp_path, GOOD))
    server = cfg.backends["vllm-server"]
    assert server.max_concurrency == 8  # parsed as YAML: a number
    assert server.base_url == "http://other:9/v1"
    assert server.model == "smollm2"  # untouched fields stay
    assert cfg.backends["fake"].options == {"seed": 9, "latency": 0.5}


def test_env_override_can_declare_a_new_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_BACKEND__EXTRA_ONE__KIND", "fake")
    cfg = load_backends(write(tmp_path, GOOD))
    assert cfg.backends["extra-one"].kind == "fake"


def test_env_override_is_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_BACKEND__FAKE__MAX_CONCURRENCY", "-1")
    with pytest.raises(ConfigError, match=r"backends\.fake\.max_concurrency.*got -1"):
        load_backends(write(tmp_path, GOOD))


@pytest.mark.parametrize(
    "key", ["TTC_BACKEND__FAKE", "TTC_BACKEND__FAKE__", "TTC_BACKEND__A__B__C"]
)
def test_malformed_env_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    monkeypatch.setenv(key, "1")
    with pytest.raises(ConfigError, match=key):
        load_backends(write(tmp_path, GOOD))


def test_env_value_with_invalid_yaml_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_BACKEND__FAKE__MODEL", "[unclosed")
    with pytest.raises(ConfigError, match="TTC_BACKEND__FAKE__MODEL"):
        load_backends(write(tmp_path, GOOD))


def test_builtin_default_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert backends_path() is None
    cfg = load_backends()
    assert cfg.default == "local"
    assert list(cfg.backends) == ["local"]
    assert cfg.backends["local"].kind == "embedded"


def test_env_override_does_not_leak_into_the_builtin_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = repr(DEFAULT_BACKENDS)
    monkeypatch.setenv("TTC_BACKEND__LOCAL__MODEL", "overridden")
    assert load_backends().backends["local"].model == "overridden"
    monkeypatch.delenv("TTC_BACKEND__LOCAL__MODEL")
    assert load_backends().backends["local"].model is None
    assert repr(DEFAULT_BACKENDS) == before


def test_backends_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert backends_path("x.yaml") == Path("x.yaml")
    (tmp_path / "configs").mkdir()
    write(tmp_path / "configs", GOOD)
    assert backends_path() == Path("configs/backends.yaml")
    assert load_backends().default == "fake"
    other = write(tmp_path, GOOD.replace("default: fake", "default: vllm-server"), "other.yaml")
    monkeypatch.setenv("TTC_BACKENDS_FILE", str(other))
    assert backends_path() == other
    assert load_backends().default == "vllm-server"
    assert load_backends(tmp_path / "configs" / "backends.yaml").default == "fake"  # arg wins


class Inner(BaseModel):
    model_config = {"extra": "forbid"}
    depth: int = Field(1, ge=1)


class Outer(BaseModel):
    model_config = {"extra": "forbid"}
    name: str = "x"
    inner: Inner = Field(default_factory=Inner)
    many: list[Inner] = Field(default_factory=list)


def test_validate_config_messages() -> None:
    assert validate_config(Outer, {"name": "y"}, "here").name == "y"
    with pytest.raises(ConfigError) as info:
        validate_config(Outer, {"nam": "y"}, "strategy 'x'")
    msg = str(info.value)
    assert msg.startswith("invalid config for strategy 'x': ")
    assert "nam: Extra inputs are not permitted (got 'y')" in msg
    assert msg.endswith("Known fields: name, inner, many")
    with pytest.raises(ConfigError) as info:
        validate_config(Outer, {"many": [{"depth": 1}, {"depht": 2}]}, "here")
    assert "many.1.depht" in str(info.value)
    assert str(info.value).endswith("Known fields: depth")
    with pytest.raises(ConfigError, match=r"inner.depth: .*got 0"):
        validate_config(Outer, {"inner": {"depth": 0}}, "here")
    with pytest.raises(ConfigError, match=r"\(top level\)"):
        validate_config(Outer, ["not", "a", "dict"], "here")


def test_backend_config_field_bounds() -> None:
    for bad in (
        {"max_retries": 21},
        {"timeout": 0},
        {"requests_per_second": 0},
        {"server": "weird"},
        {"max_concurrency": 5000},
    ):
        with pytest.raises(ConfigError):
            validate_config(BackendConfig, {"kind": "fake", **bad}, "b")

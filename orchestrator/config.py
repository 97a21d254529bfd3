"""Configuration primitives: YAML files and pydantic validation with errors that name the field.

Every config model of ttc (strategy and verifier configs, backends files, service settings,
search spaces) is validated through ``validate_config``, so a bad field always reads the same
way: the field's dotted path, the rule it broke, the value received and the fields the model
knows. This module sits at the bottom of the layers: it imports only pydantic, PyYAML and
``orchestrator.errors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import ConfigError


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside ``annotation`` (``Model``, ``dict[str, Model]``, ...), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The model that holds the field at ``loc`` (dict keys and list indices are skipped)."""
    for part in loc[:-1]:
        info = model.model_fields.get(part) if isinstance(part, str) else None
        nested = _nested_model(info.annotation) if info is not None else None
        if nested is not None:
            model = nested
    return model


def format_validation_error(exc: ValidationError, where: str, model: type[BaseModel]) -> str:
    """One message naming each bad field, its value and the rule it broke.

    The known fields listed are those of the model holding the first bad field (a backend's
    fields for ``backends.NAME.colour``, not the file's top-level fields).
    """
    problems = []
    errors = exc.errors()
    for err in errors:
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{field}: {err['msg']} (got {err.get('input')!r})")
    holder = _model_at(model, tuple(errors[0]["loc"])) if errors else model
    known = ", ".join(holder.model_fields)
    return f"invalid config for {where}: " + "; ".join(problems) + f". Known fields: {known}"


def validate_config(model: type[BaseModel], data: Any, where: str) -> Any:
    """``model.model_validate(data)``, raising ConfigError that names field, value and rule."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, model)) from None


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file, with errors that name the file (and line, for syntax errors)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {p}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from None

"""One strategy's searched parameters: read from the space file and checked against the
strategy's own pydantic config (its bounds, its ``search_hint`` ranges, its verifier names).

``strategy_space(name, entry, common, where)`` turns a space file's entry for one strategy into
its ``Param`` list; every error is a ``SpaceError`` naming the field, the value and the rule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from orchestrator.errors import ConfigError, RegistryError
from orchestrator.registry import strategies as strategy_registry

__all__ = ["Param", "SpaceError", "StrategySpace", "strategy_space"]

RESERVED = ("inner", "backend", "strategy")
"""Settings the space itself decides (``max_depth``/``inner:``, ``backends:``), not a strategy."""


class SpaceError(ConfigError):
    """A search space file (or a composition) is invalid; the message names the field."""


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) config field of one strategy.

    ``kind`` is ``int``/``float`` (``low``..``high``, optional ``log`` and ``step``),
    ``categorical`` (``choices`` holds labels, ``values`` maps a label to its config value) or
    ``fixed`` (``value``).
    """

    key: str
    kind: Literal["int", "float", "categorical", "fixed"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()
    values: dict[Any, Any] = field(default_factory=dict)
    value: Any = None

    def grid(self, where: str) -> list[Any]:
        """Every value this parameter takes, for the grid sampler."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            step = int(self.step or 1)
            return list(range(int(self.low), int(self.high) + 1, step))
        if self.kind == "float" and self.step:
            count = math.floor((self.high - self.low) / self.step + 1e-9)  # never past high
            return [round(self.low + i * self.step, 10) for i in range(count + 1)]
        raise SpaceError(
            f"{where}: a float range without `step` has no finite grid; give `step:` or "
            "`choices:` for --sampler grid"
        )


@dataclass
class StrategySpace:
    """The parameters of one strategy in the space."""

    name: str
    params: list[Param]
    has_inner: bool
    has_backend: bool = True


def _label(value: Any) -> Any:
    """A value usable as an Optuna categorical choice (mappings become their JSON)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _kind_of(annotation: Any) -> str | None:
    """``int`` or ``float`` for ``int``, ``float`` and their optional forms, else None."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1:
        annotation = args[0]
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return None


def _param(name: str, fieldname: str, raw: Any, where: str) -> Param:
    """The Param for one field of strategy ``name`` from its file entry (or its hint)."""
    cls = strategy_registry.get(name)
    info = cls.Config.model_fields.get(fieldname)
    if info is None:
        raise SpaceError(
            f"{where}: {name} has no setting {fieldname!r}; its settings: "
            f"{', '.join(cls.Config.model_fields)}"
        )
    if raw == "search":
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        raw = extra.get("search")
        if raw is None:
            raise SpaceError(
                f"{where}: {name}.{fieldname} declares no search range; give "
                "{low:, high:} or {choices: [...]}"
            )
    if not isinstance(raw, dict):
        return Param(fieldname, "fixed", value=raw)
    keys = set(raw)
    if "choices" in keys:
        if keys - {"choices"} or not isinstance(raw["choices"], list) or not raw["choices"]:
            raise SpaceError(f"{where}: expected {{choices: [non-empty list]}}, got {raw!r}")
        values = {_label(v): v for v in raw["choices"]}
        return Param(fieldname, "categorical", choices=tuple(values), values=values)
    unknown = keys - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= keys:
        raise SpaceError(
            f"{where}: a range is {{low, high, log?, step?}} and a choice is "
            f"{{choices: [...]}}; got keys {sorted(keys)}"
        )
    kind = _kind_of(info.annotation)
    if kind is None:
        raise SpaceError(
            f"{where}: {name}.{fieldname} is not a number ({info.annotation}); "
            "use {choices: [...]}"
        )
    low, high = raw["low"], raw["high"]
    if not all(_is_number(v) for v in (low, high)):
        raise SpaceError(f"{where}: low and high must be numbers, got {low!r} and {high!r}")
    if low > high:
        raise SpaceError(f"{where}: low {low} is above high {high}")
    log, step = bool(raw.get("log", False)), raw.get("step")
    if step is not None and not (_is_number(step) and step > 0):
        raise SpaceError(f"{where}: step must be a number > 0, got {step!r}")
    if step is not None and kind == "int" and not float(step).is_integer():
        raise SpaceError(f"{where}: {name}.{fieldname} is an integer; step {step!r} is not")
    if log and (low <= 0 or step not in (None, 1)):
        raise SpaceError(f"{where}: a log range needs low > 0 and no step (got low {low})")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(f"{where}: {name}.{fieldname} is an integer; got {low!r}..{high!r}")
    return Param(fieldname, kind, low=low, high=high, log=log, step=step)  # type: ignore[arg-type]


def _check_values(name: str, p: Param, fixed: dict[str, Any], where: str) -> None:
    """Build the strategy at the ends of the range (or with each choice): the config's own
    validation then names any value out of its bounds or an unknown verifier."""
    if p.kind == "fixed":
        values = [p.value]
    elif p.kind == "categorical":
        values = list(p.values.values())
    else:
        values = [int(p.low), int(p.high)] if p.kind == "int" else [p.low, p.high]
    cls = strategy_registry.get(name)
    for v in values:
        try:
            cls({**fixed, p.key: v})
        except (ConfigError, RegistryError) as exc:
            raise SpaceError(f"{where}: value {v!r} does not fit {name}: {exc}") from None


def strategy_space(
    name: str, entry: dict[str, Any], common: dict[str, Any], where: str
) -> StrategySpace:
    try:
        cls = strategy_registry.get(name)
    except RegistryError as exc:
        raise SpaceError(f"{where}: {exc}") from None
    fields = cls.Config.model_fields
    raw: dict[str, Any] = {}
    for fname, info in fields.items():  # hinted fields are searched unless the file says
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "search" in extra:
            raw[fname] = "search"
    raw.update({k: v for k, v in common.items() if k in fields})
    raw.update(entry)
    for reserved in RESERVED:
        if reserved in entry:
            raise SpaceError(
                f"{where}.{reserved}: set by the space itself (max_depth, inner, "
                "backends), not per strategy"
            )
        raw.pop(reserved, None)
    params = [_param(name, f, v, f"{where}.{f}") for f, v in raw.items()]
    fixed = {p.key: p.value for p in params if p.kind == "fixed"}
    for p in params:  # each setting alone first, so an error names the field at fault
        _check_values(name, p, {}, f"{where}.{p.key}")
    for p in params:
        _check_values(name, p, fixed, f"{where}.{p.key}")
    return StrategySpace(name, params, has_inner="inner" in fields, has_backend="backend" in fields)

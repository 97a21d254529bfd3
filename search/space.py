"""Search spaces: the compositions ``ttc search`` may try, read from ``configs/search/*.yaml``.

A space file::

    objective: {mode: multi, cost: completion_tokens}   # or mode: single, lambda: 0.0005
    budget: {max_calls: 64, max_completion_tokens: 2048} # per query, hard limits
    backends: [local]        # backends a composition may sample from (default: the run's)
    max_depth: 0             # how many times a strategy may wrap another through `inner`
    rungs: [0.1, 0.3, 1.0]   # shares of the dev split evaluated before each pruning decision
    common:                  # applied to every listed strategy whose config has the field
      temperature: {low: 0.2, high: 1.2, step: 0.1}
      max_tokens: 128
    strategies:
      single: {}
      self_consistency: {n: {low: 1, high: 16, log: true}}
      best_of_n:
        n: {choices: [1, 2, 4, 8, 16]}
        verifier: {choices: [self_eval, mean_logprob]}

A parameter is a constant (``max_tokens: 128``), a range ``{low, high, log?, step?}`` (integer or
float after the config field's type), ``{choices: [...]}`` (values may be names or spec
mappings), or ``search`` (the range the strategy's config declares with ``search_hint``). A listed
strategy's hinted fields (``n``, ``temperature``) are searched over their hinted ranges unless
the file names them: a newly registered strategy is searchable without changes here.

Parameters are suggested define-by-run (``Space.compose(chooser)``): the strategy first, then
only the parameters that strategy has (``best_of_n.verifier`` exists only when ``best_of_n`` was
chosen), and a child under ``inner`` while the depth allows. Names are paths: ``strategy``,
``best_of_n.n``, ``best_of_n.inner``, ``best_of_n.inner.self_consistency.n``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.budget import Budget
from orchestrator.config import load_yaml, validate_config
from orchestrator.errors import ConfigError
from search.params import RESERVED, Param, SpaceError, StrategySpace, strategy_space
from strategies.base import SamplingConfig

__all__ = ["Chooser", "Param", "Space", "SpaceError", "SpaceFile", "load_space"]

NONE = "none"
"""The ``inner`` choice meaning "sample directly, no child strategy"."""

_SAMPLING_FIELDS = frozenset(SamplingConfig.model_fields) | {"logprobs"}


class ObjectiveSpec(BaseModel):
    """What the search optimises."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    mode: Literal["multi", "single"] = Field(
        "multi",
        description="multi: maximise accuracy and minimise cost (Pareto front); "
        "single: maximise accuracy - lambda * cost",
    )
    cost: Literal["completion_tokens", "total_tokens", "usd", "calls"] = Field(
        "completion_tokens", description="the cost per query to minimise"
    )
    lam: float = Field(0.0, alias="lambda", ge=0.0, description="single mode: cost weight")


class EstimateSpec(BaseModel):
    """How a composition's cost is estimated before any backend call."""

    model_config = ConfigDict(extra="forbid")

    tokens_per_sample: int = Field(
        64,
        ge=1,
        description="completion tokens assumed per sample until the study has "
        "measured its own mean (capped by the composition's max_tokens)",
    )
    problems: int = Field(3, ge=1, le=100, description="dev problems the dry run poses")


class SpaceFile(BaseModel):
    """The search space file, as written."""

    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    budget: Budget = Field(default_factory=Budget)
    backends: list[str] | None = Field(None, min_length=1)
    max_depth: int = Field(0, ge=0, le=3)
    rungs: list[float] = Field(default_factory=lambda: [0.1, 0.3, 1.0], min_length=1)
    estimate: EstimateSpec = Field(default_factory=EstimateSpec)
    common: dict[str, Any] = Field(default_factory=dict)
    strategies: dict[str, dict[str, Any] | None] = Field(min_length=1)
    inner: list[str] | None = Field(None, description="strategies allowed as a child")

    @field_validator("rungs")
    @classmethod
    def _rungs_increase_to_one(cls, v: list[float]) -> list[float]:
        if any(not 0 < r <= 1 for r in v) or any(a >= b for a, b in itertools.pairwise(v)):
            raise ValueError("rungs must be increasing shares in (0, 1], e.g. [0.1, 0.3, 1.0]")
        if v[-1] != 1.0:
            raise ValueError("the last rung must be 1.0 (the whole dev split)")
        return v


class Chooser(Protocol):
    """Picks parameter values: an Optuna trial, or a replay of fixed values (grid, export)."""

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass
class Space:
    """A validated search space: what ``compose`` may build and the per-query budget."""

    file: SpaceFile
    strategies: dict[str, StrategySpace]
    inner: list[str]
    source: str = "<space>"
    _defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def budget(self) -> Budget:
        """The per-query hard limits."""
        return self.file.budget

    def compose(self, chooser: Chooser) -> dict[str, Any]:
        """A strategy spec chosen define-by-run through ``chooser``."""
        name = chooser.suggest_categorical("strategy", list(self.strategies))
        return self._node(chooser, name, "", 0)

    def _node(self, chooser: Chooser, name: str, path: str, depth: int) -> dict[str, Any]:
        node = self.strategies[name]
        prefix = f"{path}{name}."
        spec: dict[str, Any] = {"strategy": name}
        inner: str = NONE
        allowed = [s for s in self.inner if depth + 1 <= self.file.max_depth]
        if node.has_inner and allowed:
            inner = chooser.suggest_categorical(f"{prefix}inner", [NONE, *allowed])
        if inner != NONE:
            spec["inner"] = self._node(chooser, inner, f"{prefix}inner.", depth + 1)
        backends = self.file.backends
        if backends and inner == NONE and node.has_backend:
            b = backends[0] if len(backends) == 1 else None
            spec["backend"] = b or chooser.suggest_categorical(f"{prefix}backend", backends)
        for p in node.params:
            if inner != NONE and p.key in _SAMPLING_FIELDS:
                continue  # the child samples; the parent's sampling settings would be unused
            spec[p.key] = self._choose(chooser, p, prefix + p.key)
        return spec

    @staticmethod
    def _choose(chooser: Chooser, p: Param, name: str) -> Any:
        if p.kind == "fixed":
            return p.value
        if p.kind == "int":
            return chooser.suggest_int(
                name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
            )
        if p.kind == "float":
            value = chooser.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
            return round(value, 10)  # a step grid gives 0.6000000000000001; the cache wants 0.6
        label = chooser.suggest_categorical(name, list(p.choices))
        return p.values[label]

    def grid(self, limit: int = 10_000) -> list[dict[str, Any]]:
        """Every composition's parameters (for ``--sampler grid``), at most ``limit`` of them."""
        out: list[dict[str, Any]] = []
        self._explore({}, out, limit)
        return out

    def _explore(self, fixed: dict[str, Any], out: list[dict[str, Any]], limit: int) -> None:
        replay = Replay(fixed, grid_of=self)
        try:
            self.compose(replay)
        except _Branch as branch:
            for value in branch.options:
                self._explore({**fixed, branch.name: value}, out, limit)
            return
        out.append(fixed)
        if len(out) > limit:
            raise SpaceError(
                f"{self.source}: the grid has more than {limit} compositions; narrow the "
                "space or use --sampler tpe/random"
            )

    def param(self, name: str) -> Param:
        """The Param behind an Optuna parameter name such as ``best_of_n.inner.single.n``."""
        *_, strategy, fieldname = name.split(".")
        for p in self.strategies[strategy].params:
            if p.key == fieldname:
                return p
        raise KeyError(name)


class _Branch(Exception):
    def __init__(self, name: str, options: list[Any]) -> None:
        self.name, self.options = name, options


@dataclass
class Replay:
    """A Chooser that returns recorded values (``trial.params``): rebuilds a composition.

    With ``grid_of`` set, an unrecorded parameter raises ``_Branch`` with all its values (the
    grid enumeration); otherwise it is an error naming the missing parameter.
    """

    params: dict[str, Any]
    grid_of: Space | None = None

    def _get(self, name: str, options: Any) -> Any:
        if name in self.params:
            return self.params[name]
        if self.grid_of is not None:
            raise _Branch(name, options() if callable(options) else list(options))
        raise SpaceError(f"the recorded parameters have no {name!r}; known: {list(self.params)}")

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        return int(self._get(name, lambda: self._grid(name)))

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return float(self._get(name, lambda: self._grid(name)))

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._get(name, choices)

    def _grid(self, name: str) -> list[Any]:
        assert self.grid_of is not None
        return self.grid_of.param(name).grid(f"{self.grid_of.source}: {name}")


def build_space(data: Any, source: str = "<space>") -> Space:
    """Validate a parsed space file (a mapping) into a Space; SpaceError names the field."""
    if not isinstance(data, dict):
        raise SpaceError(f"{source}: expected a mapping with `strategies:`, got {data!r}")
    try:
        sf: SpaceFile = validate_config(SpaceFile, data, source)
    except ConfigError as exc:
        raise SpaceError(str(exc)) from None
    for reserved in RESERVED:
        if reserved in sf.common:
            raise SpaceError(
                f"{source}: common.{reserved}: set by the space itself (max_depth, inner, "
                "backends), not in common"
            )
    nodes = {
        name: strategy_space(name, entry or {}, sf.common, f"{source}: strategies.{name}")
        for name, entry in sf.strategies.items()
    }
    unknown_common = [
        k for k in sf.common if not any(p.key == k for n in nodes.values() for p in n.params)
    ]
    if unknown_common:
        raise SpaceError(
            f"{source}: common.{unknown_common[0]}: no listed strategy has this setting"
        )
    inner = sf.inner if sf.inner is not None else list(nodes)
    for name in inner:
        if name not in nodes:
            raise SpaceError(
                f"{source}: inner: {name!r} is not one of the listed strategies "
                f"({', '.join(nodes)})"
            )
    return Space(sf, nodes, inner, source)


def load_space(path: str | Path) -> Space:
    """Read and validate a search space file."""
    return build_space(load_yaml(path), str(path))

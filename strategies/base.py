"""The strategy contract.

A strategy is a registered class with a pydantic ``Config`` (``extra="forbid"``) and one
coroutine, ``run(problem, ctx) -> Result``. Callers use ``await strategy(problem, ctx)``, which
opens the strategy's trace span around ``run``. A strategy keeps no per-run state on ``self``:
one instance serves many concurrent runs. Composite strategies build their children in
``__init__`` and return them from ``children()``, so that capability checks, the trace and the
architecture search can walk the graph.

When the budget runs out (``BudgetExhausted`` from ``ctx.generate``) a strategy returns its best
result so far with ``budget_exhausted=True``; it never lets the exception escape once it has a
candidate.

Every config field declares what it can do (``orchestrator.trust``), in its
``json_schema_extra``: ``tuning()`` for sampling parameters, counts, thresholds and prompts
(``tuning(nested="strategy")`` / ``tuning(nested="verifier")`` for a field holding a child
spec, ``search_hint(...)`` implies tuning), ``privileged("files", "reads a file of the
server")`` and the like for a field that loads code, reads files, opens connections, reads the
environment, runs client code, sets resource limits or picks a model. A client of the service
may set only tuning fields unless the operator grants more; ``tests/unit/test_trust.py`` fails
on a registered config with an undeclared field.

``max_samples()`` bounds the model samples one run of the node may draw, its children's and
its verifiers' included, computed from the config alone; the service refuses a spec whose
bound is above its cap before any call. A strategy that cannot bound itself returns None (the
default), which the service treats as over any cap.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from orchestrator.backends.base import Backend, Capabilities, GenerationRequest
from orchestrator.config import validate_config
from orchestrator.context import RunContext
from orchestrator.errors import CapabilityError
from orchestrator.registry import strategies as registry
from orchestrator.trust import tuning
from orchestrator.types import Problem, Result

StrategySpec = str | dict[str, Any]


def search_hint(
    low: float | None = None,
    high: float | None = None,
    *,
    log: bool = False,
    step: float | None = None,
    choices: list[Any] | None = None,
) -> dict[str, Any]:
    """``json_schema_extra`` marking a config field as tuned by ``ttc search`` by default.

    A strategy listed in a search space file has its hinted fields searched over these ranges
    unless the file narrows or fixes them (see ``search.space``). Use as
    ``Field(8, ge=1, json_schema_extra=search_hint(1, 32, log=True))``. A searched field is a
    tuning field (``orchestrator.trust``): the hint declares that too.
    """
    hint: dict[str, Any] = {"low": low, "high": high, "step": step, "choices": choices}
    hint = {k: v for k, v in hint.items() if v is not None}
    if log:
        hint["log"] = True
    return {"search": hint, **tuning()}


class StrategyConfig(BaseModel):
    """Base of every strategy's config. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingConfig(StrategyConfig):
    """Sampling parameters shared by the strategies that call a backend."""

    backend: str | None = Field(
        None, description="backend name; None = the run's default", json_schema_extra=tuning()
    )
    temperature: float = Field(
        0.7, ge=0.0, le=2.0, json_schema_extra=search_hint(0.0, 1.2, step=0.1)
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0, json_schema_extra=tuning())
    max_tokens: int = Field(512, ge=1, le=32768, json_schema_extra=tuning())
    stop: list[str] | None = Field(None, json_schema_extra=tuning())

    def request(self, problem: Problem, n: int = 1, **overrides: Any) -> GenerationRequest:
        """A chat request posing ``problem`` with these sampling parameters."""
        fields: dict[str, Any] = dict(
            messages=problem.messages(),
            n=n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            stop=self.stop,
        )
        fields.update(overrides)
        return GenerationRequest(**fields)


class Strategy(abc.ABC):
    """Base class of all strategies. Subclasses set ``Config`` and implement ``run``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[StrategyConfig]] = StrategyConfig
    #: Backend capabilities this strategy always needs (the static part of ``backend_needs``).
    requires: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: StrategyConfig | dict[str, Any] | None = None, **kwargs: Any):
        if isinstance(config, StrategyConfig):
            config = config.model_dump(exclude_unset=True)
        data = {**(config or {}), **kwargs}
        self.config: Any = validate_config(self.Config, data, f"strategy {self.name!r}")

    @abc.abstractmethod
    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        """Solve ``problem``. Must not keep per-run state on ``self``."""

    async def __call__(self, problem: Problem, ctx: RunContext) -> Result:
        """Run inside this strategy's trace span and stamp the result with the name."""
        with ctx.trace.span(self.name, kind="strategy") as span:
            result = await self.run(problem, ctx)
            span.set(answer=result.answer, budget_exhausted=result.budget_exhausted)
            if result.details:
                span.set(**{k: v for k, v in result.details.items() if k != "error"})
        return result if result.strategy else result.model_copy(update={"strategy": self.name})

    def children(self) -> list[Strategy]:
        """Child strategies (composites override)."""
        return []

    def verifiers(self) -> list[Any]:
        """The verifiers this node owns (strategies with a verifier override)."""
        return []

    async def aclose(self) -> None:
        """Close this node's verifiers and its children (idempotent if theirs are)."""
        for verifier in self.verifiers():
            await verifier.aclose()
        for child in self.children():
            await child.aclose()

    def max_samples(self) -> int | None:
        """An upper bound on the model samples (each of a call's ``n`` counts) one run of this
        node may draw, its children's and its verifiers' included, from the config alone.

        The service compares it with its cap before any call. Default None: the strategy cannot
        bound itself, and the service refuses it (override it; ``runs_of`` helps).
        """
        return None

    def backend_needs(self) -> Capabilities:
        """What this node's own backend must offer (may depend on the config), as a verifier's
        ``backend_needs`` is what the backends it calls itself must offer."""
        return self.requires

    def backend_name(self) -> str | None:
        """The backend this node samples from (None = the run's default)."""
        return getattr(self.config, "backend", None)

    def check(self, resolve: Callable[[str | None], Backend]) -> None:
        """Raise CapabilityError when this node or a descendant needs what its backend lacks."""
        backend = resolve(self.backend_name())
        missing = backend.capabilities.missing(self.backend_needs())
        if missing:
            raise CapabilityError(
                f"strategy {self.name!r} needs backend capabilities {', '.join(missing)}, "
                f"which backend {backend.name!r} ({type(backend).__name__}) does not offer; "
                "choose another backend with --backend or another strategy"
            )
        for verifier in self.verifiers():
            for name, needed in verifier.backend_needs():
                judge = resolve(name)
                lacking = judge.capabilities.missing(needed)
                if lacking:
                    raise CapabilityError(
                        f"verifier {verifier.name!r} of strategy {self.name!r} needs backend "
                        f"capabilities {', '.join(lacking)}, which backend {judge.name!r} "
                        f"({type(judge).__name__}) does not offer; set the verifier's `backend`"
                    )
        for child in self.children():
            child.check(resolve)

    def describe(self) -> dict[str, Any]:
        """The config as a nested spec dict (``{"strategy": name, ...}``)."""
        return {"strategy": self.name, **self.config.model_dump(exclude_defaults=True)}


class InnerStrategy(Strategy):
    """Base of strategies whose config has an optional child strategy ``inner`` (a spec): the
    child is built once, here, and reported by ``children()``; None when the config has none."""

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        spec = self.config.inner
        self.inner: Strategy | None = None if spec is None else build_strategy(spec)

    def children(self) -> list[Strategy]:
        return [self.inner] if self.inner is not None else []


def runs_of(count: int, child: Strategy | None) -> int | None:
    """The samples of ``count`` runs of ``child`` (one sample each when ``child`` is None);
    None when the child cannot bound itself."""
    per = 1 if child is None else child.max_samples()
    return None if per is None else count * per


def build_strategy(spec: StrategySpec | Strategy) -> Strategy:
    """A strategy from a name, a spec dict ``{"strategy": name, **config}`` or an instance."""
    if isinstance(spec, Strategy):
        return spec
    strategy: Strategy = registry.build(spec, "strategy")
    return strategy

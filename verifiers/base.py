"""The verifier contract.

A verifier is a registered class with a pydantic ``Config`` and one batch-first coroutine,
``score(problem, candidates, ctx) -> list[Score]`` returning exactly one Score per candidate, in
order (higher is better). Callers use ``await verifier(problem, candidates, ctx)``, which opens a
``verifier`` trace span. Verifiers that call a model do so through ``ctx.generate`` so their
calls are charged to the run's budget. A verifier keeps no per-run state on ``self``.

Capabilities, in the same words as strategies use them: ``backend_needs()`` is what the backends
this verifier *itself* calls must offer (a judge model's top logprobs, say), checked before the
run's first call; ``candidate_needs`` is what the candidates it scores must carry, hence what the
*sampling* backend must offer (e.g. ``mean_logprob`` needs candidates sampled with logprobs);
strategies read it to ask for logprobs and to refuse backends that lack them.

Every config field declares what it can do (``orchestrator.trust``) in its
``json_schema_extra``, as strategy fields do: ``tuning()`` (``tuning(nested="verifier")`` for
child verifier specs), or ``privileged(<privilege>, <what it does>)`` for a field that loads
code (``python.function``), opens connections (``reward_model.url``), reads the environment
(``reward_model.api_key_env``), runs client code (``unit_tests.tests``) or sets resource limits
(``unit_tests.limits``). A client of the service may set only the tuning ones unless the
operator grants more. ``max_samples(candidates)`` bounds the model samples one ``score`` call
draws (0 for verifiers that call no model).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from orchestrator.backends.base import Capabilities
from orchestrator.config import validate_config
from orchestrator.context import RunContext
from orchestrator.registry import verifiers as registry
from orchestrator.types import Candidate, Problem, Score

VerifierSpec = str | dict[str, Any]


class VerifierConfig(BaseModel):
    """Base of every verifier's config. Unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Verifier(abc.ABC):
    """Base class of all verifiers. Subclasses set ``Config`` and implement ``score``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[VerifierConfig]] = VerifierConfig
    #: What the candidates must carry, so what their sampling backend must offer (logprobs).
    candidate_needs: ClassVar[Capabilities] = Capabilities()

    def __init__(self, config: VerifierConfig | dict[str, Any] | None = None, **kwargs: Any):
        if isinstance(config, VerifierConfig):
            config = config.model_dump(exclude_unset=True)
        data = {**(config or {}), **kwargs}
        self.config: Any = validate_config(self.Config, data, f"verifier {self.name!r}")

    @abc.abstractmethod
    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        """One Score per candidate, in order."""

    async def __call__(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        """Score inside a verifier span; checks the one-score-per-candidate contract."""
        with ctx.trace.span(self.name, kind="verifier", candidates=len(candidates)) as span:
            scores = await self.score(problem, candidates, ctx)
            if len(scores) != len(candidates):
                raise RuntimeError(
                    f"verifier {self.name!r} returned {len(scores)} scores "
                    f"for {len(candidates)} candidates"
                )
            span.set(scores=[round(s.value, 4) for s in scores])
        return scores

    def max_samples(self, candidates: int) -> int:
        """An upper bound on the model samples one ``score`` call over ``candidates``
        candidates draws (through ``ctx.generate``); default 0: the verifier calls no model."""
        return 0

    def backend_needs(self) -> list[tuple[str | None, Capabilities]]:
        """What the backends this verifier itself calls must offer: ``(backend name, needs)``
        pairs, None naming the run's default. ``Strategy.check`` verifies them before the run's
        first call. Default: none (the verifier calls no model)."""
        return []

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (e.g. HTTP clients). Called once by whoever built the verifier's
        strategy tree (``Orchestrator.run`` for specs it builds). Default: nothing."""

    def describe(self) -> dict[str, Any]:
        """The config as a spec dict (``{"verifier": name, ...}``)."""
        return {"verifier": self.name, **self.config.model_dump(exclude_defaults=True)}


def build_verifier(spec: VerifierSpec | Verifier) -> Verifier:
    """A verifier from a name, a spec dict ``{"verifier": name, **config}`` or an instance."""
    if isinstance(spec, Verifier):
        return spec
    verifier: Verifier = registry.build(spec, "verifier")
    return verifier

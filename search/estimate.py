"""Cost estimates before any backend call: a dry run of the composition on probe backends.

A composition is run, as it is, on a few dev problems against ``ProbeBackend``s that stand in
for the real backends (same names, capabilities and pricing) and answer instantly with
completions of ``tokens_per_sample`` tokens and a different answer every time. That gives the
calls and prompt tokens the composition makes (exactly, for the fixed-shape strategies), its
completion tokens at the assumed sample length, and its dollars; distinct answers are the worst
case for strategies that stop early on agreement. No strategy needs to know it is estimated, so
a newly registered strategy is estimated without changes here.

Prompt tokens are counted as characters / 4 (rounded up) plus 4 per message. The sample length
comes from the caller: the search uses its study's measured mean once it has one.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.backends.base import Backend, Generation, GenerationRequest
from orchestrator.budget import Budget
from orchestrator.errors import CapabilityError
from orchestrator.runner import Orchestrator
from orchestrator.types import Candidate, Problem, TokenLogprob

__all__ = ["CostEstimate", "ProbeBackend", "ProbeSet", "estimate_cost", "over_budget"]


class ProbeBackend(Backend):
    """A stand-in for ``real`` (name, model, capabilities, pricing) answering at once.

    Every sample is ``tokens_per_sample`` words (fewer when ``max_tokens`` cuts it, finish
    ``length``) ending in a boxed answer that no other sample of this probe gives; logprobs (a
    flat -1.0, with "Yes"/"No" alternatives) come when asked for. ``stop`` is ignored: full
    samples are the worst case. A request beyond ``real``'s capabilities is refused as the real
    backend would refuse it.
    """

    kind = "probe"

    def __init__(self, real: Backend, tokens_per_sample: int) -> None:
        super().__init__(real.name, real.model, real.capabilities, real.pricing)
        self.tokens_per_sample = tokens_per_sample
        self._answers = itertools.count(1)

    async def generate(self, request: GenerationRequest) -> Generation:
        """``request.n`` distinct samples; prompt tokens estimated by ``prompt_tokens``."""
        missing = self.capabilities.missing(request.required_capabilities())
        if missing:
            raise CapabilityError(f"backend {self.name!r} lacks {', '.join(missing)}")
        candidates = [self._candidate(request, next(self._answers)) for _ in range(request.n)]
        return Generation(
            candidates=candidates,
            prompt_tokens=prompt_tokens(request),
            completion_tokens=sum(c.tokens for c in candidates),
        )

    def _candidate(self, request: GenerationRequest, answer: int) -> Candidate:
        tail = f"The answer is \\boxed{{{answer}}}.".split(" ")
        words = ["step"] * max(0, self.tokens_per_sample - len(tail))
        words = (words + tail[-self.tokens_per_sample :])[: request.max_tokens]
        return Candidate(
            text=" ".join(words),
            tokens=len(words),
            logprobs=_flat_logprobs(words, request.top_logprobs) if request.logprobs else None,
            finish_reason="length" if self.tokens_per_sample > request.max_tokens else "stop",
            model=self.model,
            backend=self.name,
        )


def _flat_logprobs(words: list[str], top_logprobs: int) -> list[TokenLogprob]:
    top = dict(list({"Yes": -1.0, "No": -2.0}.items())[:top_logprobs]) or None
    return [TokenLogprob(token=w, logprob=-1.0, top=top) for w in words]


class ProbeSet(Mapping[str, Backend]):
    """Probes for the backends of ``real``, each made when first looked up (so a declared
    backend that the composition does not use is not built)."""

    def __init__(self, real: Mapping[str, Backend], tokens_per_sample: int) -> None:
        self.real = real
        self.tokens_per_sample = tokens_per_sample
        self._probes: dict[str, ProbeBackend] = {}

    def __getitem__(self, name: str) -> Backend:
        if name not in self._probes:
            self._probes[name] = ProbeBackend(self.real[name], self.tokens_per_sample)
        return self._probes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)

    def __contains__(self, name: object) -> bool:
        return name in self.real


def prompt_tokens(request: GenerationRequest) -> int:
    """A prompt-token estimate: characters / 4, plus 4 per chat message."""
    if request.prompt is not None:
        return math.ceil(len(request.prompt) / 4)
    msgs = request.messages or []
    return sum(math.ceil(len(m.content or "") / 4) + 4 for m in msgs)


@dataclass(frozen=True)
class CostEstimate:
    """Estimated spend per query: the worst of the probed problems on each measure."""

    calls: float
    prompt_tokens: float
    completion_tokens: float
    usd: float
    tokens_per_sample: int

    def as_dict(self) -> dict[str, Any]:
        """For trial attributes and progress lines."""
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usd": round(self.usd, 6),
            "tokens_per_sample": self.tokens_per_sample,
        }


async def estimate_cost(
    spec: dict[str, Any],
    orch: Orchestrator,
    problems: list[Problem],
    tokens_per_sample: int,
    *,
    timeout: float = 30.0,
) -> CostEstimate:
    """Dry-run ``spec`` on ``problems`` with probes standing in for ``orch``'s backends.

    The real backends are neither started nor called (one whose capabilities depend on its
    server is probed first, as a real run would). Raises ConfigError / CapabilityError when
    the composition does not fit its backends (as a real run would, before any call), and
    TimeoutError when the dry run takes longer than ``timeout`` seconds (a verifier that
    calls its own service, such as a reward model, is called for real).
    """
    max_tokens = int(spec.get("max_tokens") or tokens_per_sample)
    length = max(1, min(tokens_per_sample, max_tokens))
    await orch.check(spec)
    dry = Orchestrator(ProbeSet(orch.backends, length), orch.default_backend)
    worst = {"calls": 0.0, "prompt_tokens": 0.0, "completion_tokens": 0.0, "usd": 0.0}
    async with asyncio.timeout(timeout):
        for problem in problems:
            result = await dry.run(problem, spec, seed=0)
            u = result.usage
            spent = {
                "calls": u.calls,
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "usd": u.cost_usd,
            }
            worst = {k: max(v, float(spent[k])) for k, v in worst.items()}
    return CostEstimate(tokens_per_sample=length, **worst)


LIMITS = {
    "max_calls": "calls",
    "max_prompt_tokens": "prompt_tokens",
    "max_completion_tokens": "completion_tokens",
    "max_usd": "usd",
}


def over_budget(est: CostEstimate, budget: Budget) -> str | None:
    """Why ``est`` cannot fit ``budget`` (None when it fits): names the limit and both values."""
    for limit, measure in LIMITS.items():
        cap = getattr(budget, limit)
        value = getattr(est, measure)
        if cap is not None and value > cap:
            return (
                f"estimated {value:,.6g} {measure.replace('_', ' ')} per query > budget "
                f"{limit} {cap:,.6g} (at {est.tokens_per_sample} tokens per sample)"
            )
    return None


def spend_ratio(usage: dict[str, float], budget: Budget) -> float:
    """The largest ``mean spend / limit`` over the limits the budget sets (0.0 when none)."""
    ratios = [
        usage[measure] / cap
        for limit, measure in LIMITS.items()
        if (cap := getattr(budget, limit)) is not None
    ]
    return max(ratios, default=0.0)

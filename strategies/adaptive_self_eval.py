"""``adaptive_self_eval``: capability-aware adaptive sampling and early pruning.

Manvi, Singh, Ermon 2024, "Adaptive Inference-Time Compute: LLMs Can Predict if They Can Do
Better, Even Mid-Generation" (ALGORITHMS.md, "Adaptive self-evaluation"). The model judges its
own (possibly partial) response with a one-token probe, "Would you do better if you started
over?", read through top-k logprobs: score = P(No) / (P(Yes) + P(No)), the predicted chance that
a fresh sample cannot beat this one. The probe is the ``self_eval`` verifier in ``capability``
mode (``verifiers.self_eval``), run on this strategy's own backend through ``ctx.generate``.

Two modes:

- ``adaptive``: draw batches of exponentially growing size (1, 1, 2, 4, 8 for ``n_max`` 16, see
  ``batch_sizes``) on a temperature schedule (by default the first sample greedy and the later
  ones at ``temperature``, 0.7; ``temperatures`` sets another per-batch schedule); probe every
  sample; stop once the best candidate's score >= ``threshold`` (0.8; tune it: the paper's
  numbers come from a model fine-tuned for the probe, an untuned one is less calibrated) or
  ``n_max`` samples are drawn; return the best-scored candidate. With ``inner``, each "sample"
  is one run of a child strategy (the temperature schedule then belongs to the child).
- ``prune``: start ``n`` (8) samples cut at ``prefix_tokens`` (64; the paper: 64-128), probe
  each prefix, keep the top ``keep_fraction`` (0.5, i.e. prune 50%; the paper prunes 50-75%;
  ``ceil``, at least one), continue the survivors from their prefixes (an assistant
  message with ``continue_final``), probe the finished ones and return the best. A prefix that
  already finished within ``prefix_tokens`` is complete: kept, it keeps its prefix score. A
  prefix cut short has no final answer (its ``answer`` is cleared in the result), except when
  the budget let nothing finish: then the best prefix is returned as the best so far, with the
  answer extracted from its partial text and ``details["partial_answer"] = True``.

The best candidate: a live one with an extracted answer beats one without, then the higher score,
then the earlier one. Details and the strategy span report ``samples_used``, ``tokens_used``
(completion tokens of this node's calls: samples, continuations and probes, read from its
``backend`` spans), ``probe_tokens``, ``full_tokens_estimate`` and ``tokens_saved_vs_full`` (the
estimate minus ``tokens_used``; negative when the probes cost more than the saving), and
``stop_reason``. The estimate of running all N samples (``n_max`` or ``n``) to the end without
probes: samples that finished count their real tokens; each other one (never drawn, pruned, or
cut by the budget) counts the larger of its tokens so far and the mean tokens per finished
sample (``max_tokens`` when none finished); see ``estimate_full_tokens``. Every batch, probe,
prefix and continuation stage is a ``step`` span.

Backend needs: logprobs with ``top_logprobs`` alternatives (the probe), and prefix continuation in
``prune`` mode. When the budget runs out the strategy returns the best candidate so far with
``budget_exhausted=True``; a probe refused by the budget scores ``self_eval``'s fallback (0.5).
A failed sample (or failed child run) scores 0 and is never picked. ``stop_reason`` is
``threshold``, ``n_max``, ``budget`` or ``error`` (a sampling call failed outright; the best so
far is returned with ``details["error"]``) in ``adaptive`` mode, and ``completed``, ``budget`` or
``error`` (no prefix at all) in ``prune`` mode.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from orchestrator.backends.base import Capabilities
from orchestrator.context import RunContext
from orchestrator.registry import strategies
from orchestrator.trace import Span
from orchestrator.trust import tuning
from orchestrator.types import Candidate, Message, Problem, Result, Score, ScoredCandidate
from strategies._self_eval_helpers import (
    Tally,
    backend_tokens,
    batch_sizes,
    batch_temperature,
    estimate_full_tokens,
    joined,
    keep_count,
    pick_best,
    top_indices,
    without_partial_answers,
)
from strategies.base import InnerStrategy, SamplingConfig, StrategySpec, runs_of
from strategies.sampling import Collected, run_children, sample
from verifiers.self_eval import SelfEval

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]


class AdaptiveSelfEvalConfig(SamplingConfig):
    """``adaptive_self_eval`` options.

    ``temperature`` samples the ``prune`` mode's prefixes, and every ``adaptive`` batch after the
    first (greedy) one unless ``temperatures`` sets the schedule.
    """

    mode: Literal["adaptive", "prune"] = Field(
        "adaptive", description="adaptive | prune", json_schema_extra=tuning()
    )
    threshold: float = Field(
        0.8,
        ge=0.0,
        le=1.0,
        description="adaptive: stop once the best score reaches this",
        json_schema_extra=tuning(),
    )
    n_max: int = Field(
        16, ge=1, le=1024, description="adaptive: most samples drawn", json_schema_extra=tuning()
    )
    temperatures: list[Temperature] | None = Field(
        None,
        min_length=1,
        description="adaptive: per-batch temperatures, the last repeating; "
        "None = greedy first sample, then `temperature`",
        json_schema_extra=tuning(),
    )
    inner: StrategySpec | None = Field(
        None,
        description="adaptive: a child strategy whose runs replace the samples",
        json_schema_extra=tuning(nested="strategy"),
    )
    n: int = Field(
        8, ge=1, le=1024, description="prune: samples started", json_schema_extra=tuning()
    )
    prefix_tokens: int = Field(
        64, ge=1, description="prune: tokens before the prefix probe", json_schema_extra=tuning()
    )
    keep_fraction: float = Field(
        0.5,
        gt=0.0,
        le=1.0,
        description="prune: share of prefixes continued (at least one)",
        json_schema_extra=tuning(),
    )
    question: str | None = Field(
        None,
        min_length=1,
        description="probe question; None = self_eval's capability question",
        json_schema_extra=tuning(),
    )
    top_logprobs: int = Field(
        20,
        ge=1,
        le=20,
        description="alternatives read at the probe token",
        json_schema_extra=tuning(),
    )

    @property
    def schedule(self) -> list[float]:
        """The per-batch temperatures of ``adaptive`` mode."""
        return self.temperatures or [0.0, self.temperature]

    @model_validator(mode="after")
    def _prefix_shorter_than_max_tokens(self) -> AdaptiveSelfEvalConfig:
        if self.mode == "prune" and self.prefix_tokens >= self.max_tokens:
            raise ValueError(
                f"prefix_tokens ({self.prefix_tokens}) must be below max_tokens "
                f"({self.max_tokens}) in prune mode; lower prefix_tokens or raise max_tokens"
            )
        return self

    @model_validator(mode="after")
    def _inner_only_when_adaptive(self) -> AdaptiveSelfEvalConfig:
        if self.mode == "prune" and self.inner is not None:
            raise ValueError("inner works in mode 'adaptive' only (prune continues own prefixes)")
        return self


@strategies.register("adaptive_self_eval")
class AdaptiveSelfEval(InnerStrategy):
    """Adaptive sampling or early pruning driven by the model's own "do better?" probe."""

    Config = AdaptiveSelfEvalConfig

    def __init__(self, config: Any = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        cfg = self.config
        self.probe = SelfEval(
            mode="capability",
            backend=cfg.backend,
            question=cfg.question,
            top_logprobs=cfg.top_logprobs,
        )

    def backend_needs(self) -> Capabilities:
        """The probe's logprobs and top_logprobs; prefix continuation in ``prune`` mode."""
        cfg = self.config
        return Capabilities(
            logprobs=True,
            top_logprobs=cfg.top_logprobs,
            prefix_continuation=cfg.mode == "prune",
        )

    def verifiers(self) -> list[Any]:
        return [self.probe]

    def max_samples(self) -> int | None:
        """``adaptive``: ``n_max`` samples (or child runs) and one probe per candidate;
        ``prune``: ``n`` prefixes and their probes, then the survivors' continuations and
        final probes."""
        cfg = self.config
        if cfg.mode == "prune":
            return 2 * cfg.n + 2 * keep_count(cfg.n, cfg.keep_fraction)
        drawn = runs_of(cfg.n_max, self.inner)
        return None if drawn is None else drawn + self.probe.max_samples(cfg.n_max)

    async def run(self, problem: Problem, ctx: RunContext) -> Result:
        if self.config.mode == "prune":
            return await self._prune(problem, ctx)
        return await self._adaptive(problem, ctx)

    async def _probe(
        self, problem: Problem, cands: list[Candidate], ctx: RunContext, t: Tally, **attrs: Any
    ) -> tuple[list[Score], Span]:
        """Probe ``cands`` inside a ``probe`` step span (scores and tokens go to the tally)."""
        with ctx.trace.span("probe", kind="step", candidates=len(cands), **attrs) as span:
            scores = await self.probe(problem, cands, ctx) if cands else []
            span.set(scores=[round(s.value, 4) for s in scores])
        t.probed(scores, span)
        return scores, span

    # --- adaptive sampling ------------------------------------------------------------------

    async def _draw(self, problem: Problem, ctx: RunContext, size: int, temp: float) -> Collected:
        """``size`` samples at ``temp``, or ``size`` runs of the child strategy."""
        if self.inner is not None:
            return await run_children(problem, ctx, self.inner, size)
        request = self.config.request(problem, n=size, temperature=temp)
        return await sample(ctx, request, self.config.backend)

    async def _adaptive(self, problem: Problem, ctx: RunContext) -> Result:
        cfg = self.config
        t = Tally()
        cands: list[Candidate] = []
        scores: list[Score] = []
        best: int | None = None
        stop = "n_max"
        for b, size in enumerate(batch_sizes(cfg.n_max)):
            temp = None if self.inner else batch_temperature(b, cfg.schedule)
            with ctx.trace.span("batch", kind="step", batch=b, size=size, temperature=temp) as sp:
                got = await self._draw(problem, ctx, size, temp or 0.0)
                sp.set(returned=len(got.candidates), failed=len(got.candidates) - len(got.ok))
            t.note(got)
            t.sample_tokens += backend_tokens(sp)
            new, sp = await self._probe(problem, got.candidates, ctx, t, batch=b)
            cands += got.candidates
            scores += new
            best = pick_best(cands, [s.value for s in scores])
            sp.set(best_score=round(scores[best].value, 4) if best is not None else None)
            if best is not None and scores[best].value >= cfg.threshold:
                stop = "threshold"
            elif t.exhausted:
                stop = "budget"
            elif got.error and not got.candidates:  # the call itself failed
                stop = "error"
            else:
                continue
            break
        live = sum(not c.failed for c in cands)
        full = estimate_full_tokens(t.sample_tokens, live, [0] * (cfg.n_max - live), cfg.max_tokens)
        details = t.details(full, stop)
        details.update(
            mode="adaptive",
            samples_used=len(cands),
            failed=len(cands) - live,
            best_score=round(scores[best].value, 6) if best is not None else None,
            threshold=cfg.threshold,
        )
        return self._result(cands, [[s] for s in scores], best, t, details)

    # --- early pruning ----------------------------------------------------------------------

    async def _continue(self, problem: Problem, ctx: RunContext, prefix: Candidate) -> Collected:
        """Continue ``prefix`` to the end as the final, partial assistant message."""
        cfg = self.config
        request = cfg.request(
            problem,
            n=1,
            messages=[*problem.messages(), Message(role="assistant", content=prefix.text)],
            continue_final=True,
            max_tokens=max(1, cfg.max_tokens - prefix.tokens),
        )
        return await sample(ctx, request, cfg.backend)

    async def _finish(
        self, problem: Problem, ctx: RunContext, cands: list[Candidate], cut: list[int], t: Tally
    ) -> list[int]:
        """Continue the cut survivors concurrently; each that finishes becomes prefix + rest.

        Returns the indices that finished; a survivor whose continuation failed or was refused
        by the budget stays a (partial) prefix.
        """
        with ctx.trace.span("continue", kind="step", survivors=cut) as sp:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._continue(problem, ctx, cands[i])) for i in cut]
            done = []
            for i, task in zip(cut, tasks, strict=True):
                got = task.result()
                t.note(got)
                if got.ok:
                    cands[i] = joined(cands[i], got.ok[0], problem.answer_format)
                    done.append(i)
            sp.set(finished=done)
        t.sample_tokens += backend_tokens(sp)
        return done

    async def _prefixes(self, problem: Problem, ctx: RunContext, t: Tally) -> list[Candidate]:
        """Start ``n`` samples, each cut after ``prefix_tokens``, in one ``prefixes`` span."""
        cfg = self.config
        with ctx.trace.span(
            "prefixes", kind="step", n=cfg.n, prefix_tokens=cfg.prefix_tokens
        ) as sp:
            request = cfg.request(problem, n=cfg.n, max_tokens=cfg.prefix_tokens)
            got = await sample(ctx, request, cfg.backend)
            sp.set(returned=len(got.candidates), failed=len(got.candidates) - len(got.ok))
        t.note(got)
        t.sample_tokens += backend_tokens(sp)
        return list(got.candidates)

    async def _prune(self, problem: Problem, ctx: RunContext) -> Result:
        cfg = self.config
        t = Tally()
        cands = await self._prefixes(problem, ctx, t)
        pre, sp = await self._probe(problem, cands, ctx, t, stage="prefix")
        live = [i for i, c in enumerate(cands) if not c.failed]
        ranked = top_indices([pre[i].value for i in live], keep_count(len(live), cfg.keep_fraction))
        kept = [live[j] for j in ranked]
        sp.set(kept=kept, pruned=[i for i in live if i not in kept])
        cut = [i for i in kept if cands[i].finish_reason == "length"]
        final = {i: pre[i] for i in kept if i not in cut}  # complete within the prefix
        done: list[int] = []
        if cut:
            done = await self._finish(problem, ctx, cands, cut, t)
            post, _ = await self._probe(problem, [cands[i] for i in done], ctx, t, stage="final")
            final.update(zip(done, post, strict=True))
        value = [final[i].value if i in final else s.value for i, s in enumerate(pre)]
        best = pick_best(cands, value, final or None)  # nothing finished (budget): best prefix
        partial = best is not None and best not in final
        cands = without_partial_answers(cands, keep={*final, best})
        rest = [cands[i].tokens for i in range(len(cands)) if i not in final]
        full = estimate_full_tokens(
            sum(cands[i].tokens for i in final),
            len(final),
            rest + [0] * (cfg.n - len(cands)),
            cfg.max_tokens,
        )
        stop = "budget" if t.exhausted else "completed" if live else "error"
        details = t.details(full, stop)
        details.update(
            mode="prune",
            samples_used=len(cands),
            failed=len(cands) - len(live),
            kept=len(kept),
            pruned=len(live) - len(kept),
            completed=len(final),
            best_score=round(value[best], 6) if best is not None else None,
            partial_answer=partial,
        )
        scores = [[s, final[i]] if i in done else [s] for i, s in enumerate(pre)]
        return self._result(cands, scores, best, t, details)

    @staticmethod
    def _result(
        cands: list[Candidate],
        scores: list[list[Score]],
        best: int | None,
        t: Tally,
        details: dict[str, Any],
    ) -> Result:
        return Result(
            answer=cands[best].answer if best is not None else None,
            candidate=cands[best] if best is not None else None,
            candidates=[
                ScoredCandidate(candidate=c, scores=s) for c, s in zip(cands, scores, strict=True)
            ],
            budget_exhausted=t.exhausted,
            details=details,
        )

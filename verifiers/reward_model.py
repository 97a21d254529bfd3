"""``reward_model``: score candidates with an outcome or process reward model served over HTTP.

Two kinds of server:

- ``vllm``: vLLM's pooling API, ``POST {base_url}/pooling``, on a model served with
  ``--runner pooling``. A sequence-classification model (``--convert classify``; the default
  ``classify`` task) answers one row of label scores per input. A process reward model served
  with ``--pooler-config '{"task": "token_classify", "tok_pooling_type": "STEP",
  "step_tag_id": ID}'`` answers one row per step tag: set ``step_tag`` to that token's text
  (the steps are then sent as ``step1<tag>step2<tag>``, the Qwen2.5-Math-PRM convention).
  ``label_index`` picks the reward from a row. Text inputs (``input_template``) share one
  batched request; ``chat: true`` sends ``messages`` instead, one request per input (the API
  takes one conversation per request).
- ``generic``: any JSON API. ``request_template`` is filled in (``{question}``, ``{answer}``,
  ``{steps}`` per candidate; ``{answers}`` / ``{all_steps}`` make one request for the whole
  batch) and ``score_path`` picks the score(s) from the answer: ``"scores"``, ``"data.0.score"``,
  ``"data.*.score"`` (``*`` maps over a list; ``data[0]`` works too).

Outcome mode scores the whole text. Process mode splits it on ``step_delimiter`` and aggregates
the step scores by ``last``, ``min``, ``prod`` or ``mean`` (after ``normalize``); on a vLLM
classify model without ``step_tag`` each prefix (steps 1..k) is scored, in the same batch. Step
scores go in ``Score.details["step_scores"]``. Failed or empty candidates score 0, unsent.

Every HTTP request is retried per ``orchestrator.backends._retry``, recorded as a ``backend``
span named ``reward_model`` (``calls=1``, no tokens) under the verifier span and charged one call
to the run's budget (``BudgetMeter.admit_call``). Reward-model tokens are *not* charged to the
token budget; the span's ``input_tokens`` attribute shows them when the server reports usage.
The HTTP client is created on first use (per event loop) and closed by ``aclose()``.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
from pydantic import Field, model_validator

from orchestrator.backends._retry import RetryPolicy, call_with_retries
from orchestrator.context import RunContext
from orchestrator.errors import BackendProtocolError, ConfigError
from orchestrator.registry import verifiers
from orchestrator.trust import privileged, tuning
from orchestrator.types import Candidate, Problem, Score, Usage
from verifiers._http import fill, gather, is_number, placeholders, post_json, resolve, shape
from verifiers.base import Verifier, VerifierConfig

Aggregate = Literal["last", "min", "prod", "mean"]
_BATCH = {"answers", "all_steps"}
_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "last": lambda v: v[-1],
    "min": min,
    "prod": math.prod,
    "mean": statistics.fmean,
}


class RewardModelConfig(VerifierConfig):
    """``reward_model`` options (see the module docstring)."""

    kind: Literal["vllm", "generic"] = Field("vllm", json_schema_extra=tuning())
    base_url: str | None = Field(
        None,
        description="vllm: server root, e.g. http://host:8000",
        json_schema_extra=privileged("network", "the server the verifier connects to"),
    )
    model: str | None = Field(
        None,
        description="vllm: the served model name",
        json_schema_extra=privileged("model", "the reward model asked for"),
    )
    api_key_env: str | None = Field(
        None,
        description="environment variable with a bearer token",
        json_schema_extra=privileged(
            "environment", "sends the value of a server environment variable as a bearer token"
        ),
    )
    process: bool = Field(
        False, description="score steps and aggregate (a PRM)", json_schema_extra=tuning()
    )
    step_delimiter: str = Field("\n\n", min_length=1, json_schema_extra=tuning())
    aggregate: Aggregate = Field("last", json_schema_extra=tuning())
    input_template: str = Field(
        "{question}\n\n{answer}", description="vllm: the text input", json_schema_extra=tuning()
    )
    chat: bool = Field(
        False, description="vllm: send chat messages instead of text", json_schema_extra=tuning()
    )
    step_tag: str | None = Field(
        None, min_length=1, description="vllm PRM: the step tag token", json_schema_extra=tuning()
    )
    label_index: int = Field(
        -1, description="vllm: which label of a score row is the reward", json_schema_extra=tuning()
    )
    url: str | None = Field(
        None,
        description="generic: the endpoint URL",
        json_schema_extra=privileged("network", "the URL the verifier posts to"),
    )
    request_template: Any = Field(
        None, description="generic: the JSON body with placeholders", json_schema_extra=tuning()
    )
    score_path: str | None = Field(
        None, min_length=1, description="generic: path to the score", json_schema_extra=tuning()
    )
    normalize: Literal["none", "sigmoid"] = Field("none", json_schema_extra=tuning())
    timeout: float = Field(
        60.0,
        gt=0,
        description="seconds per attempt",
        json_schema_extra=privileged("resources", "seconds per attempt"),
    )
    max_retries: int = Field(
        3, ge=0, le=20, json_schema_extra=privileged("resources", "retries per request")
    )
    max_concurrency: int = Field(
        8, ge=1, json_schema_extra=privileged("resources", "requests in flight at once")
    )

    @model_validator(mode="after")
    def _fields_of_kind(self) -> RewardModelConfig:
        need = ["base_url"] if self.kind == "vllm" else ["url", "request_template", "score_path"]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"kind {self.kind!r} needs {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _step_tag_in_process_mode(self) -> RewardModelConfig:
        if self.step_tag is not None and not (self.process and self.kind == "vllm"):
            raise ValueError("step_tag needs kind 'vllm' and process: true")
        return self

    @model_validator(mode="after")
    def _known_placeholders(self) -> RewardModelConfig:
        names = set(re.findall(r"\{(\w+)\}", self.input_template))
        if not names <= {"question", "answer"}:
            raise ValueError(
                f"input_template may use {{question}} and {{answer}}, got {sorted(names)}"
            )
        used = placeholders(self.request_template)
        if used & _BATCH and used & {"answer", "steps"}:
            raise ValueError(
                "request_template mixes per-candidate ({answer}, {steps}) and batch "
                "({answers}, {all_steps}) placeholders; use one kind"
            )
        return self


@verifiers.register("reward_model")
class RewardModel(Verifier):
    """Scores candidates with a reward model over HTTP (see the module docstring).

    Args:
        config: a ``RewardModelConfig`` or its fields as a mapping.
        transport: the httpx transport to send through (tests: ``httpx.MockTransport``).
        **kwargs: config fields.
    """

    Config = RewardModelConfig

    def __init__(
        self,
        config: VerifierConfig | dict[str, Any] | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._semaphore = asyncio.Semaphore(1)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def score(
        self, problem: Problem, candidates: list[Candidate], ctx: RunContext
    ) -> list[Score]:
        skipped = [{"skipped": "failed" if c.failed else "empty"} for c in candidates]
        out = [Score(value=0.0, verifier=self.name, details=d) for d in skipped]
        live = [i for i, c in enumerate(candidates) if not c.failed and self._steps(c.text)]
        if not live:
            return out
        texts = [candidates[i].text for i in live]
        if self.config.kind == "vllm":
            raw = await self._score_vllm(problem, texts, ctx)
        else:
            raw = await self._score_generic(problem, texts, ctx)
        for i, values in zip(live, raw, strict=True):
            out[i] = self._make_score(values)
        return out

    async def aclose(self) -> None:
        """Close the HTTP client, if one was opened. Idempotent; the verifier stays usable."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # -- scores ---------------------------------------------------------------------------------

    def _steps(self, text: str) -> list[str]:
        return [s for s in (p.strip() for p in text.split(self.config.step_delimiter)) if s]

    def _make_score(self, raw: list[float]) -> Score:
        cfg = self.config
        values = [_sigmoid(x) for x in raw] if cfg.normalize == "sigmoid" else list(raw)
        details: dict[str, Any] = {"raw": raw} if cfg.normalize != "none" else {}
        if cfg.process:
            details.update(step_scores=values, aggregate=cfg.aggregate)
            return Score(
                value=_AGGREGATES[cfg.aggregate](values), verifier=self.name, details=details
            )
        return Score(value=values[0], verifier=self.name, details=details)

    # -- vLLM pooling API -----------------------------------------------------------------------

    async def _score_vllm(
        self, problem: Problem, texts: list[str], ctx: RunContext
    ) -> list[list[float]]:
        cfg = self.config
        steps = [self._steps(t) for t in texts]
        if not cfg.process:
            groups = [[t] for t in texts]
        elif cfg.step_tag is not None:
            groups = [["".join(s + cfg.step_tag for s in st)] for st in steps]
        else:
            groups = [
                [cfg.step_delimiter.join(st[:k]) for k in range(1, len(st) + 1)] for st in steps
            ]
        outputs = iter(await self._pool(problem, [a for g in groups for a in g], ctx))
        if cfg.step_tag is None:
            return [[self._label(next(outputs)) for _ in g] for g in groups]
        result = []
        for st in steps:
            rows = next(outputs)
            if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
                raise self._protocol(
                    f"expected one score row per step tag, got {shape(rows)}: serve the model "
                    "with --pooler-config task token_classify, tok_pooling_type STEP, step_tag_id"
                )
            if len(rows) != len(st):
                raise self._protocol(
                    f"expected {len(st)} step scores (one per step_tag {cfg.step_tag!r}), got "
                    f"{len(rows)}: is the server's step_tag_id the token of {cfg.step_tag!r}?"
                )
            result.append([self._label(r) for r in rows])
        return result

    def _label(self, row: Any) -> float:
        """The reward in one row of label scores."""
        if not isinstance(row, list) or not row or not all(is_number(x) for x in row):
            hint = ""
            if isinstance(row, list) and any(isinstance(x, list) for x in row):
                hint = (
                    "; token-level scores mean the server runs token_classify: set step_tag "
                    "(process mode) or serve the classify task"
                )
            raise self._protocol(f"expected a row of label scores, got {shape(row)}{hint}")
        try:
            return float(row[self.config.label_index])
        except IndexError:
            raise self._protocol(
                f"label_index {self.config.label_index} is out of range for {len(row)} labels"
            ) from None

    async def _pool(self, problem: Problem, answers: list[str], ctx: RunContext) -> list[Any]:
        """One ``data`` entry per answer from ``/pooling``: batched text, or one chat each."""
        cfg = self.config
        url = cfg.base_url.rstrip("/").removesuffix("/v1") + "/pooling"
        head = {"model": cfg.model} if cfg.model else {}
        if not cfg.chat:
            inputs = [
                fill(cfg.input_template, question=problem.question, answer=a) for a in answers
            ]
            return self._pool_data(
                await self._post(ctx, url, {**head, "input": inputs}), len(inputs)
            )

        async def one(answer: str) -> Any:
            messages = [m.model_dump() for m in problem.messages()]
            body = {**head, "messages": [*messages, {"role": "assistant", "content": answer}]}
            return self._pool_data(await self._post(ctx, url, body), 1)[0]

        return await gather([one(a) for a in answers])

    def _pool_data(self, response: Any, n: int) -> list[Any]:
        data = response.get("data") if isinstance(response, dict) else None
        if (
            not isinstance(data, list)
            or len(data) != n
            or not all(isinstance(d, dict) for d in data)
        ):
            raise self._protocol(
                f"expected {{'data': [{n} pooling outputs]}}, got {shape(response)}"
            )
        return [d.get("data") for d in data]

    # -- generic JSON API ---------------------------------------------------------------------

    async def _score_generic(
        self, problem: Problem, texts: list[str], ctx: RunContext
    ) -> list[list[float]]:
        cfg = self.config
        q = problem.question
        steps = [self._steps(t) for t in texts]
        if placeholders(cfg.request_template) & _BATCH:
            body = fill(cfg.request_template, question=q, answers=texts, all_steps=steps)
            found = self._resolve(await self._post(ctx, cfg.url, body))
            if not isinstance(found, list) or len(found) != len(texts):
                raise self._protocol(
                    f"score_path {cfg.score_path!r} gave {shape(found)}, "
                    f"expected a list of {len(texts)} scores (one per candidate)"
                )
            return [self._numbers(v) for v in found]

        async def one(text: str, st: list[str]) -> list[float]:
            body = fill(cfg.request_template, question=q, answer=text, steps=st)
            return self._numbers(self._resolve(await self._post(ctx, cfg.url, body)))

        return await gather([one(t, st) for t, st in zip(texts, steps, strict=True)])

    def _resolve(self, response: Any) -> Any:
        path = self.config.score_path
        try:
            return resolve(response, path)
        except LookupError as exc:
            raise self._protocol(
                f"score_path {path!r} does not fit the response: {exc.args[0]}; "
                f"response shape: {shape(response)}"
            ) from None

    def _numbers(self, value: Any) -> list[float]:
        """One candidate's score(s): a number, or a list of step scores in process mode."""
        values = value if isinstance(value, list) else [value]
        if not values or not all(is_number(v) for v in values):
            raise self._protocol(
                f"score_path {self.config.score_path!r} gave {shape(value)}, expected a number"
                + (" or a list of step scores" if self.config.process else "")
            )
        if len(values) > 1 and not self.config.process:
            raise self._protocol(
                f"score_path {self.config.score_path!r} gave {len(values)} scores for one "
                "candidate; set process: true to aggregate step scores"
            )
        return [float(v) for v in values]

    # -- HTTP -----------------------------------------------------------------------------------

    def _http(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The client and concurrency limit, created on first use in this event loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            headers = {}
            if self.config.api_key_env:
                key = os.environ.get(self.config.api_key_env)
                if not key:
                    raise ConfigError(
                        f"verifier {self.name!r}: environment variable "
                        f"{self.config.api_key_env!r} (api_key_env) is not set"
                    )
                headers["Authorization"] = f"Bearer {key}"
            self._client = httpx.AsyncClient(
                headers=headers, timeout=self.config.timeout, transport=self._transport
            )
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
            self._loop = loop
        return self._client, self._semaphore

    async def _post(self, ctx: RunContext, url: str, body: Any) -> Any:
        """POST ``body`` with retries, inside a span, charged one call; the decoded JSON."""
        cfg = self.config
        client, semaphore = self._http()

        async def attempt() -> Any:
            async with semaphore, asyncio.timeout(cfg.timeout):
                return await post_json(client, url, body)

        model = {"model": cfg.model} if cfg.model else {}
        adm = ctx.meter.admit_call()
        with ctx.trace.span(self.name, kind="backend", url=url, **model) as span:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(ctx.meter.seconds_left()) as deadline:
                    answer = await call_with_retries(
                        attempt,
                        RetryPolicy(max_retries=cfg.max_retries),
                        backend=self.name,
                        context=f"POST {url}",
                        timeout=cfg.timeout,
                    )
            except TimeoutError:
                ctx.meter.release(adm)
                if not deadline.expired():
                    raise
                raise ctx.meter.refuse("seconds", "deadline passed during a call") from None
            except BaseException:
                ctx.meter.release(adm)
                raise
            ctx.meter.settle(adm, Usage(calls=1, seconds=time.perf_counter() - t0))
            usage = answer.get("usage") if isinstance(answer, dict) else None
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            span.set(calls=1, **({"input_tokens": tokens} if isinstance(tokens, int) else {}))
        return answer

    def _protocol(self, message: str) -> BackendProtocolError:
        return BackendProtocolError(message, backend=self.name)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)

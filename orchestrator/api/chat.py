"""Translation between the OpenAI chat format and ttc runs (used by ``openai_routes``).

Request -> runs: :func:`parse_model` reads ``<strategy-or-config>:<backend-or-model>``;
:func:`build_spec` assembles the strategy spec (precedence in ``openai_routes``);
:func:`problem_from_messages` poses the chat as a Problem; :func:`build_requests` makes one
ReasonRequest per choice. Runs -> response: :func:`choice_of`, :func:`usage_total` and
:func:`ttc_object`.

Messages: system (and developer) messages become the problem's system prompt; the last message
must be a user message (the question); earlier user/assistant turns are prepended to the
question as a ``Role: text`` transcript. ``n`` runs the strategy ``n`` times independently
(seeds ``seed + i`` when ``seed`` is given); choice ``i`` is run ``i``'s chosen candidate, and
``usage`` totals every backend call of every run. The response adds a ``ttc`` object.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.api.errors import APIError
from orchestrator.api.policy import RequestPolicy, is_model_override, public_spec
from orchestrator.api.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    FinishReason,
    ReasonRequest,
    TTCOptions,
)
from orchestrator.errors import RegistryError
from orchestrator.runner import Orchestrator
from orchestrator.specs import Catalog, apply_overrides, config_fields, resolve_spec
from orchestrator.store.keys import ApiKey
from orchestrator.store.run_store import RunRecord
from orchestrator.types import Problem

log = logging.getLogger("orchestrator.api.openai_routes")


def parse_model(
    model: str, backends: Mapping[str, Any], catalog: Catalog
) -> tuple[str | None, str | None, str | None]:
    """``(strategy, backend, model_override)`` from a model name (see the module docstring);
    APIError 400 (``param="model"``) for a plain name that is neither a backend nor a strategy."""
    if ":" in model:
        head, tail = model.split(":", 1)
        if not tail or tail in backends:
            return head or None, tail or None, None
        return head or None, None, tail
    if model in backends:
        return None, model, None
    if model in catalog.available():
        return model, None, None
    raise APIError(
        400,
        f"unknown model {model!r}: use '<strategy-or-config>:<backend-or-model>', a backend name "
        f"({', '.join(backends)}) or a strategy name ({', '.join(catalog.available())}); "
        "GET /v1/models lists them",
        param="model",
        code="model_not_found",
    )


# -- request -> runs ---------------------------------------------------------------------------


def _text(message: ChatMessage, index: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(
                400,
                f"only text content parts are supported, got {part.type!r}",
                param=f"messages.{index}.content",
                code="unsupported_content",
            )
        parts.append(part.text)
    return "".join(parts)


def problem_from_messages(messages: Sequence[ChatMessage], answer_format: str | None) -> Problem:
    """The Problem posed by a chat (see the module docstring); APIError 400 when the last
    message is not a non-empty user message."""
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        text = _text(message, i)
        if message.role in ("system", "developer"):
            system.append(text)
        else:
            turns.append((message.role, text))
    last = len(messages) - 1
    if not turns or messages[last].role != "user" or not turns[-1][1].strip():
        raise APIError(
            400,
            "the last message must be a non-empty user message: ttc answers a question",
            param=f"messages.{last}",
            code="invalid_value",
        )
    question = turns[-1][1]
    if len(turns) > 1:
        history = "\n\n".join(f"{role.capitalize()}: {text}" for role, text in turns[:-1])
        question = f"{history}\n\nUser: {question}"
    return Problem(
        question=question,
        system_prompt="\n\n".join(system) or None,
        answer_format=answer_format or "auto",
    )


def build_spec(
    body: ChatCompletionRequest,
    strategy: str | None,
    default: Any,
    catalog: Catalog,
    trust: ClientTrust | None = None,
) -> dict[str, Any]:
    """The strategy spec of a chat request (precedence in the module docstring). With
    ``trust``, what the client set is checked against the service's policy (403 / 400)."""
    ttc = body.ttc or TTCOptions()
    if trust is not None and isinstance(ttc.strategy, Mapping):
        trust.policy.check_spec(ttc.strategy, "ttc.strategy", trust.key)
    ref = ttc.strategy if ttc.strategy is not None else strategy
    try:
        spec = resolve_spec(ref, default, catalog=catalog)
    except RegistryError as exc:
        param = "ttc.strategy" if ttc.strategy is not None else "model"
        raise APIError(400, str(exc), param=param, code="unknown_strategy") from None
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    standard = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "max_tokens": body.max_completion_tokens or body.max_tokens,
        "stop": stop,
    }
    spec, ignored = apply_overrides(spec, standard)
    for name in ignored:
        log.debug("strategy %s has no %r field: ignoring it", spec["strategy"], name)
    if trust is not None:
        trust.policy.check_overrides(spec["strategy"], ttc.model_extra or {}, "ttc", trust.key)
        trust.policy.check_overrides(spec["strategy"], ttc.config, "ttc.config", trust.key)
    spec, unknown = apply_overrides(spec, ttc.model_extra or {})
    if unknown:
        options = ", ".join(sorted(TTCOptions.model_fields))
        fields = ", ".join(sorted(config_fields(spec)))
        raise APIError(
            400,
            f"unknown ttc field {unknown[0]!r}: neither a ttc option ({options}) nor a config "
            f"field of strategy {spec['strategy']!r} ({fields})",
            param=f"ttc.{unknown[0]}",
            code="unknown_field",
        )
    spec.update(ttc.config)
    return spec


@dataclass(frozen=True)
class ClientTrust:
    """Who sent a request (``key``, None with auth off) and the policy it is checked by."""

    policy: RequestPolicy
    key: ApiKey | None
    orch: Orchestrator


def build_requests(
    body: ChatCompletionRequest,
    backends: Mapping[str, Any],
    default: Any,
    max_n: int,
    catalog: Catalog,
    trust: ClientTrust | None = None,
) -> tuple[dict[str, Any], list[ReasonRequest]]:
    """The strategy spec and one ReasonRequest per choice; with ``trust``, the request is
    checked against the service's policy first (messages, model override, spec fields)."""
    if body.model_extra:
        log.debug("ignoring unknown chat completion fields: %s", ", ".join(body.model_extra))
    if body.n > max_n:
        raise APIError(
            400,
            f"n={body.n} is above this server's limit of {max_n}",
            param="n",
            code="invalid_value",
        )
    strategy, backend, model = parse_model(body.model, backends, catalog)
    if trust is not None:
        trust.policy.check_messages(body.messages)
        if is_model_override(trust.orch, backend, model):
            trust.policy.check_model(trust.key, "model")
    spec = build_spec(body, strategy, default, catalog, trust)
    ttc = body.ttc or TTCOptions()
    problem = problem_from_messages(body.messages, ttc.answer_format)
    reqs = [
        ReasonRequest(
            problem=problem,
            strategy=spec,
            budget=ttc.budget,
            backend=backend,
            model=model,
            seed=None if body.seed is None else body.seed + i,
            options={"include_trace": True, "source": "chat.completions", "choice": i},
        )
        for i in range(body.n)
    ]
    return spec, reqs


# -- runs -> response --------------------------------------------------------------------------


def choice_of(record: RunRecord) -> tuple[str, FinishReason]:
    """(content, finish_reason) of a succeeded run."""
    result = record.result or {}
    cand = result.get("candidate")
    if cand is None:
        return "", "length" if result.get("budget_exhausted") else "stop"
    return cand.get("text", ""), "length" if cand.get("finish_reason") == "length" else "stop"


def usage_total(records: Sequence[RunRecord]) -> dict[str, int]:
    """OpenAI usage summed over the runs."""
    prompt = sum(int((r.usage or {}).get("prompt_tokens", 0)) for r in records)
    completion = sum(int((r.usage or {}).get("completion_tokens", 0)) for r in records)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def ttc_object(spec: Mapping[str, Any], records: Sequence[RunRecord]) -> dict[str, Any]:
    """The ``ttc`` response object: strategy, spec, run ids, ``budget_exhausted`` (any run),
    the first run's answer, votes or scores and confidence at the top, and each run's (with
    its full usage: calls, cost, cached tokens, seconds) in ``runs``."""
    runs = []
    for rec in records:
        result = rec.result or {}
        details = result.get("details") or {}
        entry: dict[str, Any] = {
            "run_id": rec.id,
            "answer": result.get("answer"),
            "budget_exhausted": bool(result.get("budget_exhausted")),
            "usage": rec.usage,
        }
        for name in ("votes", "confidence"):
            if name in details:
                entry[name] = details[name]
        scores = [sc["scores"][-1]["value"] for sc in result.get("candidates", []) if sc["scores"]]
        if scores:
            entry["scores"] = scores
        runs.append(entry)
    first = {k: v for k, v in runs[0].items() if k not in ("run_id", "usage")}
    return {
        "strategy": spec["strategy"],
        "spec": public_spec(dict(spec)),
        **first,
        "budget_exhausted": any(r["budget_exhausted"] for r in runs),
        "run_ids": [r.id for r in records],
        "runs": runs,
    }

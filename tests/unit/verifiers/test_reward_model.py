"""Tests for the ``reward_model`` verifier: vLLM pooling and generic JSON APIs.

Most tests drive the real ``httpx.AsyncClient`` through ``httpx.MockTransport`` (exact control
of each answer); the conformance suite and the end-to-end run use ``FakeRewardServer``, a real
HTTP server speaking vLLM's ``/pooling`` shape.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest

from orchestrator.budget import Budget, BudgetMeter
from orchestrator.context import RunContext
from orchestrator.errors import (
    BackendProtocolError,
    BackendRequestError,
    BackendTimeout,
    BackendUnavailable,
    BudgetExhausted,
    ConfigError,
)
from orchestrator.runner import Orchestrator
from orchestrator.testing import FakeBackend
from orchestrator.testing.fake_reward_server import FakeRewardServer
from orchestrator.testing.verifier_suite import VerifierConformance
from orchestrator.trace import Trace
from orchestrator.types import Candidate, Problem, Score
from strategies.base import build_strategy
from verifiers import Verifier, build_verifier
from verifiers._http import fill, resolve, shape
from verifiers.reward_model import RewardModel

PROBLEM = Problem(question="What is 2+2?", system_prompt="Be brief.")


def cand(text: str, error: str | None = None) -> Candidate:
    return Candidate(text=text, error=error, finish_reason="error" if error else "stop")


def make_ctx(budget: Budget | None = None) -> RunContext:
    return RunContext(PROBLEM, {"fake": FakeBackend()}, "fake", BudgetMeter(budget), Trace())


def pooling(outputs: list[Any], prompt_tokens: int = 7) -> dict[str, Any]:
    """A vLLM ``/pooling`` answer with one output per input."""
    data = [{"index": i, "object": "pooling", "data": d} for i, d in enumerate(outputs)]
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens, "completion_tokens": 0}
    return {"id": "pool-1", "object": "list", "model": "rm", "data": data, "usage": usage}


class Server:
    """A MockTransport handler: records request bodies, answers from ``respond`` or a script."""

    def __init__(self, respond: Callable[[dict[str, Any]], Any]) -> None:
        self.respond = respond
        self.script: list[httpx.Response] = []
        self.bodies: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.in_flight = self.max_in_flight = 0
        self.latency = 0.0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        self.bodies.append(body)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency)
            if self.script:
                return self.script.pop(0)
            return httpx.Response(200, json=self.respond(body))
        finally:
            self.in_flight -= 1

    def verifier(self, **config: Any) -> RewardModel:
        settings = {"base_url": "http://rm.test/v1", "model": "rm"} | config
        return RewardModel(settings, transport=httpx.MockTransport(self))


def by_text(scores: dict[str, float]) -> Callable[[dict[str, Any]], Any]:
    """Answer each input (text or chat) with ``[scores[text]]``."""

    def respond(body: dict[str, Any]) -> Any:
        if "messages" in body:
            return pooling([[scores[body["messages"][-1]["content"]]]])
        return pooling([[scores[t]] for t in body["input"]])

    return respond


async def run(
    verifier: Verifier, cands: list[Candidate], ctx: RunContext | None = None
) -> list[Score]:
    return await verifier(PROBLEM, cands, ctx or make_ctx())


# --- vLLM pooling API: outcome --------------------------------------------------------------


async def test_outcome_scores_the_batch_in_one_request() -> None:
    server = Server(lambda body: pooling([[0.25], [0.75]]))
    cands = [cand("first"), cand("", error="boom"), cand("second"), cand("  \n\n ")]
    scores = await run(server.verifier(), cands)
    assert [s.value for s in scores] == [0.25, 0.0, 0.75, 0.0]
    assert [s.details for s in scores] == [{}, {"skipped": "failed"}, {}, {"skipped": "empty"}]
    assert [str(r.url) for r in server.requests] == ["http://rm.test/pooling"]
    q = PROBLEM.question
    assert server.bodies == [{"model": "rm", "input": [f"{q}\n\nfirst", f"{q}\n\nsecond"]}]


async def test_label_index_picks_the_reward_label() -> None:
    server = Server(lambda body: pooling([[0.9, 0.1]]))
    assert [s.value for s in await run(server.verifier(label_index=0), [cand("x")])] == [0.9]
    assert [s.value for s in await run(server.verifier(), [cand("x")])] == [0.1]


async def test_chat_sends_one_conversation_per_candidate() -> None:
    server = Server(by_text({"a": 0.1, "b": 0.2, "c": 0.3}))
    server.latency = 0.01
    verifier = server.verifier(chat=True, max_concurrency=2)
    scores = await run(verifier, [cand("a"), cand("b"), cand("c")])
    assert [s.value for s in scores] == [0.1, 0.2, 0.3]
    assert len(server.bodies) == 3 and server.max_in_flight == 2
    assert server.bodies[0]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "a"},
    ]


async def test_token_level_rows_in_outcome_mode_name_the_fix() -> None:
    server = Server(lambda body: pooling([[[0.1], [0.2]]]))
    with pytest.raises(BackendProtocolError, match="token_classify: set step_tag"):
        await run(server.verifier(), [cand("x")])


async def test_wrong_number_of_outputs_is_a_protocol_error() -> None:
    server = Server(lambda body: pooling([[0.1]]))
    with pytest.raises(BackendProtocolError, match=r"expected \{'data': \[2 pooling outputs"):
        await run(server.verifier(), [cand("x"), cand("y")])


# --- vLLM pooling API: process --------------------------------------------------------------

STEPS = {"A": 0.9, "A\n\nB": 0.5, "A\n\nB\n\nC": 0.8}


@pytest.mark.parametrize(
    ("aggregate", "expected"),
    [("last", 0.8), ("min", 0.5), ("prod", 0.9 * 0.5 * 0.8), ("mean", (0.9 + 0.5 + 0.8) / 3)],
)
async def test_process_mode_scores_prefixes_and_aggregates(aggregate: str, expected: float) -> None:
    server = Server(by_text(STEPS | {"D": 0.4}))
    verifier = server.verifier(process=True, aggregate=aggregate, input_template="{answer}")
    scores = await run(verifier, [cand("A\n\nB\n\n\n\nC\n\n"), cand("D")])
    assert scores[0].value == pytest.approx(expected)
    assert scores[0].details == {"step_scores": [0.9, 0.5, 0.8], "aggregate": aggregate}
    assert scores[1].value == pytest.approx(0.4)
    assert server.bodies == [{"model": "rm", "input": [*STEPS, "D"]}]  # one batched request


async def test_process_mode_custom_delimiter() -> None:
    server = Server(by_text({"A": 0.2, "A||B": 0.6}))
    verifier = server.verifier(process=True, step_delimiter="||", input_template="{answer}")
    scores = await run(verifier, [cand("A||B")])
    assert scores[0].details["step_scores"] == [0.2, 0.6]


async def test_step_tag_mode_reads_one_row_per_step() -> None:
    server = Server(lambda body: pooling([[[0.3, 0.7], [0.6, 0.4]], [[0.1, 0.9]]]))
    verifier = server.verifier(
        process=True, step_tag="<s>", aggregate="min", input_template="{answer}"
    )
    scores = await run(verifier, [cand("one\n\ntwo"), cand("only")])
    assert server.bodies[0]["input"] == ["one<s>two<s>", "only<s>"]
    assert [s.value for s in scores] == pytest.approx([0.4, 0.9])
    assert scores[0].details["step_scores"] == pytest.approx([0.7, 0.4])


async def test_step_tag_count_mismatch_names_the_tag() -> None:
    server = Server(lambda body: pooling([[]]))
    verifier = server.verifier(process=True, step_tag="<s>")
    with pytest.raises(BackendProtocolError, match=r"expected 2 step scores .* '<s>'"):
        await run(verifier, [cand("one\n\ntwo")])


async def test_step_tag_against_the_fake_vllm_server() -> None:
    with FakeRewardServer(step_tag="<s>", labels=2, scorer=lambda t: len(t) / 100) as fake:
        verifier = RewardModel(
            base_url=fake.root_url, model="fake-rm", process=True, step_tag="<s>", chat=True
        )
        try:
            scores = await run(verifier, [cand("ab\n\ncd")])
        finally:
            await verifier.aclose()
    prefix = "system: Be brief.\nuser: What is 2+2?\nassistant: "
    expected = [len(prefix + "ab<s>") / 100, len(prefix + "ab<s>cd<s>") / 100]
    assert scores[0].details["step_scores"] == pytest.approx(expected)


# --- normalisation --------------------------------------------------------------------------


async def test_sigmoid_normalisation() -> None:
    server = Server(lambda body: pooling([[0.0], [2.0], [-3.0]]))
    scores = await run(server.verifier(normalize="sigmoid"), [cand("a"), cand("b"), cand("c")])
    expected = [0.5, 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(3.0))]
    assert [s.value for s in scores] == pytest.approx(expected)
    assert scores[1].details == {"raw": [2.0]}


async def test_sigmoid_applies_per_step_before_aggregating() -> None:
    server = Server(lambda body: pooling([[0.0], [100.0]]))
    verifier = server.verifier(process=True, normalize="sigmoid", aggregate="prod")
    scores = await run(verifier, [cand("a\n\nb")])
    assert scores[0].value == pytest.approx(0.5)
    assert scores[0].details["raw"] == [0.0, 100.0]


# --- generic JSON API -----------------------------------------------------------------------


def generic(server: Server, **config: Any) -> RewardModel:
    settings = {"kind": "generic", "url": "http://judge.test/score"} | config
    return RewardModel(settings, transport=httpx.MockTransport(server))


async def test_generic_fills_the_template_and_follows_a_nested_path() -> None:
    server = Server(lambda body: {"result": {"scores": [{"value": len(body["in"]["a"]) / 10}]}})
    template = {
        "in": {"q": "{question}", "a": "{answer}", "steps": "{steps}"},
        "note": "Q={question}",
    }
    verifier = generic(server, request_template=template, score_path="result.scores[0].value")
    scores = await run(verifier, [cand("x\n\nyz"), cand("abc")])
    assert [s.value for s in scores] == pytest.approx([0.5, 0.3])
    assert server.bodies[0] == {
        "in": {"q": "What is 2+2?", "a": "x\n\nyz", "steps": ["x", "yz"]},
        "note": "Q=What is 2+2?",
    }
    assert len(server.bodies) == 2  # per-candidate template: one request each


async def test_generic_batch_placeholders_make_one_request() -> None:
    server = Server(lambda body: {"data": [{"score": i / 10} for i, _ in enumerate(body["docs"])]})
    template = {"query": "{question}", "docs": "{answers}", "all": "{all_steps}"}
    verifier = generic(server, request_template=template, score_path="data.*.score")
    scores = await run(verifier, [cand("a"), cand("x", error="e"), cand("b\n\nc")])
    assert [s.value for s in scores] == [0.0, 0.0, 0.1]
    assert server.bodies == [
        {"query": "What is 2+2?", "docs": ["a", "b\n\nc"], "all": [["a"], ["b", "c"]]}
    ]


async def test_generic_process_mode_aggregates_step_scores() -> None:
    server = Server(lambda body: {"step_scores": [0.9, 0.3, 0.6][: len(body["steps"])]})
    verifier = generic(
        server,
        request_template={"steps": "{steps}"},
        score_path="step_scores",
        process=True,
        aggregate="min",
    )
    scores = await run(verifier, [cand("a\n\nb\n\nc"), cand("a")])
    assert [s.value for s in scores] == pytest.approx([0.3, 0.9])
    assert scores[0].details["step_scores"] == [0.9, 0.3, 0.6]


async def test_generic_outcome_mode_rejects_several_scores() -> None:
    server = Server(lambda body: {"scores": [0.1, 0.2]})
    verifier = generic(server, request_template={"a": "{answer}"}, score_path="scores")
    with pytest.raises(BackendProtocolError, match="2 scores for one candidate; set process"):
        await run(verifier, [cand("a")])


async def test_bad_score_path_names_the_path_and_the_response_shape() -> None:
    server = Server(lambda body: {"scores": [0.1, 0.2], "model": "m"})
    verifier = generic(server, request_template={"a": "{answer}"}, score_path="data.0.score")
    with pytest.raises(BackendProtocolError) as info:
        await run(verifier, [cand("a")])
    message = str(info.value)
    assert "score_path 'data.0.score'" in message and "nothing at 'data'" in message
    assert "{'scores': [float, ... (2 items)], 'model': str}" in message
    assert len(server.bodies) == 1  # a configuration mismatch is not retried


async def test_score_path_to_a_non_number() -> None:
    server = Server(lambda body: {"score": "high"})
    verifier = generic(server, request_template={"a": "{answer}"}, score_path="score")
    with pytest.raises(BackendProtocolError, match="gave str, expected a number"):
        await run(verifier, [cand("a")])


# --- transport: retries and errors ----------------------------------------------------------


def error(status: int, message: str = "boom", **headers: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "E", "param": None, "code": status}}
    return httpx.Response(status, json=body, headers=headers)


async def test_retries_5xx_and_429_then_succeeds() -> None:
    server = Server(lambda body: pooling([[0.6]]))
    server.script = [error(503, **{"Retry-After": "0"}), error(429, **{"Retry-After": "0"})]
    ctx = make_ctx()
    scores = await run(server.verifier(max_retries=2), [cand("a")], ctx)
    assert [s.value for s in scores] == [0.6] and len(server.bodies) == 3
    assert ctx.meter.usage.calls == 1  # one logical call, however many attempts


async def test_gives_up_after_max_retries() -> None:
    server = Server(lambda body: pooling([[0.6]]))
    server.script = [error(500, **{"Retry-After": "0"}) for _ in range(3)]
    ctx = make_ctx()
    with pytest.raises(BackendUnavailable, match="HTTP 500: boom; gave up after 3 attempt"):
        await run(server.verifier(max_retries=2), [cand("a")], ctx)
    assert len(server.bodies) == 3 and ctx.meter.usage.calls == 0


async def test_4xx_is_not_retried() -> None:
    server = Server(lambda body: pooling([[0.6]]))
    server.script = [error(404, "The model `rm` does not exist.")]
    with pytest.raises(BackendRequestError, match=r"does not exist.*not retried") as info:
        await run(server.verifier(), [cand("a")])
    assert info.value.status == 404 and len(server.bodies) == 1


async def test_malformed_json_is_retried() -> None:
    server = Server(lambda body: pooling([[0.6]]))
    server.script = [httpx.Response(200, content=b'{"data": [', headers={"Retry-After": "0"})]
    server.script[0].headers["content-type"] = "application/json"
    with pytest.raises(BackendProtocolError, match="unparseable response"):
        await run(server.verifier(max_retries=0), [cand("a")])


async def test_timeout_becomes_backend_timeout() -> None:
    server = Server(lambda body: pooling([[0.6]]))
    server.latency = 5.0
    with pytest.raises(BackendTimeout, match=r"no response within 0\.05 s"):
        await run(server.verifier(timeout=0.05, max_retries=0), [cand("a")])


async def test_connection_error_becomes_backend_unavailable() -> None:
    async def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    verifier = RewardModel(
        base_url="http://rm.test", max_retries=0, transport=httpx.MockTransport(refuse)
    )
    with pytest.raises(
        BackendUnavailable, match="connection error: ConnectError: connection refused"
    ):
        await run(verifier, [cand("a")])


# --- trace, budget, cancellation, lifecycle -------------------------------------------------


async def test_each_http_call_is_a_span_inside_the_verifier_span() -> None:
    server = Server(by_text({"a": 0.1, "b": 0.2}))
    ctx = make_ctx()
    await run(server.verifier(chat=True), [cand("a"), cand("b")], ctx)
    (verifier_span,) = ctx.trace.root.children
    assert verifier_span.kind == "verifier" and verifier_span.name == "reward_model"
    calls = verifier_span.children
    assert [c.kind for c in calls] == ["backend", "backend"]
    assert all(
        c.attrs == {"url": "http://rm.test/pooling", "model": "rm", "calls": 1, "input_tokens": 7}
        for c in calls
    )
    assert all(c.end is not None and c.prompt_tokens == 0 for c in calls)
    assert ctx.meter.usage.calls == 2 and ctx.meter.usage.total_tokens == 0


async def test_calls_limit_refuses_further_requests() -> None:
    server = Server(by_text({"a": 0.1, "b": 0.2}))
    ctx = make_ctx(Budget(max_calls=1))
    with pytest.raises(BudgetExhausted, match="calls"):
        await run(server.verifier(chat=True), [cand("a"), cand("b")], ctx)
    assert ctx.meter.exhausted_by == "calls"


async def test_cancellation_propagates_and_releases_the_call() -> None:
    entered = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        entered.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    verifier = RewardModel(base_url="http://rm.test", transport=httpx.MockTransport(hang))
    ctx = make_ctx(Budget(max_calls=1))
    task = asyncio.create_task(run(verifier, [cand("a")], ctx))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (call,) = ctx.trace.root.children[0].children
    assert call.error is not None and "CancelledError" in call.error
    assert ctx.meter.usage.calls == 0
    ctx.meter.admit_call()  # the cancelled call's reservation was released


async def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(lambda body: pooling([[0.5]]))
    verifier = server.verifier(api_key_env="TTC_TEST_RM_KEY")
    with pytest.raises(ConfigError, match="'TTC_TEST_RM_KEY'"):
        await run(verifier, [cand("a")])
    monkeypatch.setenv("TTC_TEST_RM_KEY", "sekret")
    await run(verifier, [cand("a")])
    assert server.requests[-1].headers["authorization"] == "Bearer sekret"


async def test_aclose_is_idempotent_and_the_verifier_reopens() -> None:
    server = Server(lambda body: pooling([[0.5]]))
    verifier = server.verifier()
    await verifier.aclose()  # nothing opened yet
    await run(verifier, [cand("a")])
    await verifier.aclose()
    await verifier.aclose()
    assert [s.value for s in await run(verifier, [cand("a")])] == [0.5]
    await verifier.aclose()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "kind 'vllm' needs base_url"),
        ({"kind": "generic", "url": "http://x"}, "needs request_template, score_path"),
        ({"base_url": "http://x", "step_tag": "<s>"}, "step_tag needs kind 'vllm' and process"),
        ({"base_url": "http://x", "input_template": "{prompt}"}, "input_template may use"),
        ({"base_url": "http://x", "aggregate": "max"}, "aggregate"),
        ({"base_url": "http://x", "timeout": 0}, "timeout"),
        (
            {
                "kind": "generic",
                "url": "http://x",
                "score_path": "s",
                "request_template": {"a": "{answer}", "b": "{answers}"},
            },
            "mixes per-candidate",
        ),
    ],
)
def test_config_validation(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RewardModel(config)


def test_registered_and_buildable_from_a_spec() -> None:
    verifier = build_verifier({"verifier": "reward_model", "base_url": "http://x", "process": True})
    assert isinstance(verifier, RewardModel) and verifier.config.process


# --- JSON helpers ---------------------------------------------------------------------------


def test_fill_keeps_lists_whole_and_splices_text() -> None:
    template = {"s": "{steps}", "t": "n={steps}", "k": [1, "{question}?"], "other": "{x}"}
    filled = fill(template, steps=["a", "b"], question="q")
    assert filled == {"s": ["a", "b"], "t": 'n=["a", "b"]', "k": [1, "q?"], "other": "{x}"}


def test_resolve_paths() -> None:
    doc = {"data": [{"s": 1}, {"s": 2}], "x": [[5, 6]]}
    assert resolve(doc, "data.*.s") == [1, 2]
    assert resolve(doc, "data[-1].s") == 2
    assert resolve(doc, "x[0][1]") == 6
    with pytest.raises(LookupError, match=r"nothing at 'data\.2'"):
        resolve(doc, "data.2.s")
    assert shape(doc) == "{'data': [{'s': int}, ... (2 items)], 'x': [[int, ... (2 items)]]}"


# --- end to end and conformance (FakeRewardServer over real HTTP) ---------------------------


@pytest.fixture
def reward_server() -> Iterator[FakeRewardServer]:
    with FakeRewardServer(scorer=lambda text: 1.0 if "boxed{7}" in text else 0.1) as fake:
        yield fake


async def test_best_of_n_picks_the_reward_models_favourite(reward_server: FakeRewardServer) -> None:
    backend = FakeBackend(answers=["42", "7", "42", "41"])
    spec = {
        "strategy": "best_of_n",
        "n": 4,
        "verifier": {
            "verifier": "reward_model",
            "base_url": reward_server.root_url,
            "model": "fake-rm",
        },
    }
    strategy = build_strategy(spec)
    result = await Orchestrator([backend]).run("What is 3 + 4?", strategy)
    await strategy.verifier.aclose()  # type: ignore[attr-defined]
    assert result.answer == "7"
    assert [sc.score for sc in result.candidates] == [0.1, 1.0, 0.1, 0.1]
    assert result.usage.calls == 2 and reward_server.count("/pooling") == 1
    assert result.trace is not None
    spans = [s for s in _walk(result.trace) if s["kind"] == "backend"]
    assert result.usage.calls == sum(s["attrs"]["calls"] for s in spans)


def _walk(span: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield span
    for child in span.get("children", []):
        yield from _walk(child)


class TestRewardModelConformance(VerifierConformance):
    """The verifier contract for the ``vllm`` kind, against the fake pooling server.

    (``tests/conformance`` covers the ``generic`` kind.)
    """

    server: ClassVar[FakeRewardServer]

    @classmethod
    def setup_class(cls) -> None:
        cls.server = FakeRewardServer(latency=0.02).start()

    @classmethod
    def teardown_class(cls) -> None:
        cls.server.stop()

    def make_verifier(self) -> Verifier:
        return build_verifier(
            {"verifier": "reward_model", "base_url": self.server.root_url, "model": "fake-rm"}
        )

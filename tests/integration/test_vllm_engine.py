"""VLLMEngineBackend on the embedded SmolLM2 model: one real engine for the whole session."""

from __future__ import annotations

import asyncio

import pytest

from orchestrator.backends.base import GenerationRequest
from orchestrator.backends.embedded import EMBEDDED_MODEL_NAME
from orchestrator.backends.vllm_engine import VLLMEngineBackend
from orchestrator.errors import BackendRequestError
from orchestrator.types import Message

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

QUESTION = [Message(role="user", content="What is 2 + 3?")]
FINISH_REASONS = {"stop", "length"}


async def test_cpu_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = VLLMEngineBackend("b", "some/model", engine_kwargs={"max_num_seqs": 8})
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    args = backend.engine_args(on_cpu=True)
    assert args["enforce_eager"] is True and args["kv_cache_memory_bytes"] == 1 << 30
    assert args["max_model_len"] == 2048 and args["enable_prefix_caching"] is True
    assert args["max_num_seqs"] == 8
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")  # vLLM's CPU platform reads it itself
    assert "kv_cache_memory_bytes" not in backend.engine_args(on_cpu=True)
    assert "enforce_eager" not in backend.engine_args(on_cpu=False)
    override = VLLMEngineBackend("b", "m", engine_kwargs={"enforce_eager": False})
    assert override.engine_args(on_cpu=True)["enforce_eager"] is False


def _unfinished(backend: VLLMEngineBackend) -> int:
    engine = backend._engine  # white-box: is the cancelled request gone from the engine?
    assert engine is not None
    return engine.get_num_unfinished_requests()


async def test_n_samples_with_token_counts(vllm_engine_backend: VLLMEngineBackend) -> None:
    request = GenerationRequest(messages=QUESTION, n=4, temperature=0.8, max_tokens=24)
    gen = await vllm_engine_backend.generate(request)
    assert len(gen.candidates) == 4
    for cand in gen.candidates:
        assert cand.text and 0 < cand.tokens <= 24
        assert cand.finish_reason in FINISH_REASONS
        assert cand.model == EMBEDDED_MODEL_NAME and cand.backend == "embedded-test"
        assert cand.logprobs is None
    assert gen.completion_tokens == sum(c.tokens for c in gen.candidates)
    assert gen.prompt_tokens > 5 and gen.calls == 1


async def test_logprobs_with_top_alternatives(vllm_engine_backend: VLLMEngineBackend) -> None:
    request = GenerationRequest(
        prompt="The capital of France is", n=2, max_tokens=8, logprobs=True, top_logprobs=3
    )
    gen = await vllm_engine_backend.generate(request)
    for cand in gen.candidates:
        assert cand.logprobs is not None and len(cand.logprobs) == cand.tokens
        for tok in cand.logprobs:
            assert tok.logprob <= 0.0
            assert tok.top is not None and 1 <= len(tok.top) <= 3
            assert all(lp <= 0.0 for lp in tok.top.values())
        assert cand.mean_logprob() is not None


async def test_logprobs_of_sampled_tokens_only(vllm_engine_backend: VLLMEngineBackend) -> None:
    request = GenerationRequest(prompt="One, two, three,", max_tokens=6, logprobs=True)
    (cand,) = (await vllm_engine_backend.generate(request)).candidates
    assert cand.logprobs is not None and len(cand.logprobs) == cand.tokens
    assert all(tok.top is None for tok in cand.logprobs)
    assert "".join(tok.token for tok in cand.logprobs) == cand.text


async def test_chat_answers_a_question(vllm_engine_backend: VLLMEngineBackend) -> None:
    request = GenerationRequest(messages=QUESTION, temperature=0.0, max_tokens=32)
    (cand,) = (await vllm_engine_backend.generate(request)).candidates
    assert cand.text.strip()
    assert "5" in cand.text
    assert "<|im_start|>" not in cand.text and "<|im_end|>" not in cand.text


async def test_prefix_continuation(vllm_engine_backend: VLLMEngineBackend) -> None:
    prefix = "Sure! The three primary colors are red,"
    messages = [
        Message(role="user", content="Name the three primary colors."),
        Message(role="assistant", content=prefix),
    ]
    request = GenerationRequest(
        messages=messages, continue_final=True, temperature=0.0, max_tokens=16
    )
    (cand,) = (await vllm_engine_backend.generate(request)).candidates
    assert cand.text.strip()
    assert not cand.text.lstrip().startswith("Sure")
    assert prefix not in cand.text
    assert "<|im_start|>" not in cand.text


async def test_max_tokens_is_honoured(vllm_engine_backend: VLLMEngineBackend) -> None:
    request = GenerationRequest(prompt="Once upon a time", n=3, temperature=1.0, max_tokens=5)
    gen = await vllm_engine_backend.generate(request)
    assert len(gen.candidates) == 3
    for cand in gen.candidates:
        assert 0 < cand.tokens <= 5
        assert cand.finish_reason == "length" or cand.tokens < 5


async def test_greedy_n_is_repeated_and_charged_once(
    vllm_engine_backend: VLLMEngineBackend,
) -> None:
    request = GenerationRequest(messages=QUESTION, n=3, temperature=0.0, max_tokens=12)
    gen = await vllm_engine_backend.generate(request)
    assert len(gen.candidates) == 3
    assert len({c.text for c in gen.candidates}) == 1
    assert gen.completion_tokens == gen.candidates[0].tokens


async def test_seed_and_stop_are_accepted(vllm_engine_backend: VLLMEngineBackend) -> None:
    request = GenerationRequest(
        prompt="Count: 1, 2, 3, 4,", temperature=0.0, max_tokens=20, stop=[" 7"], seed=123
    )
    (cand,) = (await vllm_engine_backend.generate(request)).candidates
    assert " 7" not in cand.text and cand.finish_reason == "stop"


async def test_too_long_prompt_is_a_request_error(vllm_engine_backend: VLLMEngineBackend) -> None:
    request = GenerationRequest(prompt="hello " * 3000, max_tokens=4)
    with pytest.raises(BackendRequestError, match="embedded-test"):
        await vllm_engine_backend.generate(request)


async def test_cancellation_aborts_and_later_requests_work(
    vllm_engine_backend: VLLMEngineBackend,
) -> None:
    long = GenerationRequest(prompt="Write a very long story.", n=2, max_tokens=1500)
    task = asyncio.create_task(vllm_engine_backend.generate(long))
    async with asyncio.timeout(60):
        while _unfinished(vllm_engine_backend) == 0:
            await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(30):
        while _unfinished(vllm_engine_backend) > 0:
            await asyncio.sleep(0.05)
    request = GenerationRequest(messages=QUESTION, max_tokens=8)
    (cand,) = (await vllm_engine_backend.generate(request)).candidates
    assert cand.tokens > 0

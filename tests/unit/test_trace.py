"""Tests for orchestrator.trace: span nesting, errors, serialisation and task isolation."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from orchestrator.trace import Span, Trace


def test_spans_nest_under_the_current_span() -> None:
    trace = Trace(strategy="x")
    with trace.span("outer", kind="strategy", n=2) as outer:
        with trace.span("call", kind="backend") as call:
            call.prompt_tokens, call.completion_tokens, call.cost_usd = 10, 5, 0.25
        with trace.span("judge", kind="verifier"):
            pass
        outer.set(answer="42")
    with trace.span("second"):
        pass
    trace.finish()
    root = trace.root
    assert root.kind == "run" and root.attrs == {"strategy": "x"}
    assert [c.name for c in root.children] == ["outer", "second"]
    assert [c.name for c in root.children[0].children] == ["call", "judge"]
    assert outer.attrs == {"n": 2, "answer": "42"}
    assert [s.name for s in root.walk()] == ["run", "outer", "call", "judge", "second"]
    assert [s.name for s in trace.backend_spans()] == ["call"]


def test_span_end_and_seconds() -> None:
    trace = Trace()
    with trace.span("s") as span:
        assert span.end is None
        time.sleep(0.002)
        assert span.seconds > 0
    assert span.end is not None
    assert span.seconds == pytest.approx(span.end - span.start)
    assert trace.root.end is None
    trace.finish()
    assert trace.root.end is not None


def test_exception_is_recorded_and_reraised_and_context_restored() -> None:
    trace = Trace()
    with pytest.raises(ValueError, match="boom"), trace.span("bad") as bad:
        raise ValueError("boom")
    assert bad.error == "ValueError: boom"
    assert bad.end is not None
    with trace.span("after") as after:  # the current span was reset: sibling, not child
        pass
    assert [c.name for c in trace.root.children] == ["bad", "after"]
    assert after.error is None


def test_to_dict_is_json_ready_and_kind_specific() -> None:
    trace = Trace(problem_id="p1")
    with trace.span("sc", kind="strategy", n=3), trace.span("fake", kind="backend", model="m") as b:
        b.prompt_tokens, b.completion_tokens, b.cost_usd = 7, 11, 0.5
    with pytest.raises(RuntimeError), trace.span("oops", kind="verifier"):
        raise RuntimeError("bad")
    trace.finish()
    d = json.loads(json.dumps(trace.to_dict()))
    assert d["name"] == "run" and d["kind"] == "run" and d["attrs"] == {"problem_id": "p1"}
    sc, oops = d["children"]
    assert "prompt_tokens" not in sc and sc["attrs"] == {"n": 3}
    backend = sc["children"][0]
    assert backend == {
        "name": "fake",
        "kind": "backend",
        "seconds": backend["seconds"],
        "prompt_tokens": 7,
        "completion_tokens": 11,
        "cost_usd": 0.5,
        "attrs": {"model": "m"},
    }
    assert oops["error"] == "RuntimeError: bad"
    assert "children" not in oops and "attrs" not in oops


def test_span_ids_are_unique() -> None:
    t1, t2 = Trace(), Trace()
    with t1.span("a") as a, t2.span("b") as b:
        pass
    ids = [s.id for s in (t1.root, t2.root, a, b)]
    assert len(set(ids)) == 4
    assert a.trace_id == t1.id and b.trace_id == t2.id


def test_span_of_another_trace_is_not_a_parent() -> None:
    t1, t2 = Trace(), Trace()
    with t1.span("outer1"), t2.span("outer2") as o2, t1.span("inner1") as i1:
        pass
    assert [c.name for c in t2.root.children] == ["outer2"]
    assert o2.children == []
    # inner1 was opened while t2's span was current: it falls back to t1's root
    assert [c.name for c in t1.root.children] == ["outer1", "inner1"]
    assert i1.trace_id == t1.id


async def test_concurrent_tasks_attach_children_to_their_own_parent() -> None:
    trace = Trace()

    async def branch(name: str) -> None:
        with trace.span(name):
            await asyncio.sleep(0.001)
            with trace.span(f"{name}.call", kind="backend"):
                await asyncio.sleep(0.001)

    with trace.span("fan-out") as top:
        async with asyncio.TaskGroup() as tg:
            for i in range(5):
                tg.create_task(branch(f"b{i}"))
    assert sorted(c.name for c in top.children) == [f"b{i}" for i in range(5)]
    for child in top.children:
        assert [g.name for g in child.children] == [f"{child.name}.call"]
    assert len(trace.backend_spans()) == 5


async def test_concurrent_traces_do_not_mix() -> None:
    async def run(i: int) -> Trace:
        trace = Trace(i=i)
        with trace.span(f"s{i}"):
            await asyncio.sleep(0.001)
            with trace.span(f"c{i}", kind="backend"):
                await asyncio.sleep(0.001)
        return trace

    traces = await asyncio.gather(*(run(i) for i in range(10)))
    for i, trace in enumerate(traces):
        assert [s.name for s in trace.root.walk()] == ["run", f"s{i}", f"c{i}"]


def test_span_set_overwrites() -> None:
    span = Span(name="s", kind="step")
    span.set(a=1, b=2)
    span.set(a=3)
    assert span.attrs == {"a": 3, "b": 2}

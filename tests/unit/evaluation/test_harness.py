"""EvalRunner on the FakeBackend: records, resume, cache sharing, failures, cancellation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orchestrator.errors import CapabilityError, ConfigError
from orchestrator.evaluation.harness import EvalRunner, EvalTarget, problem_seed
from orchestrator.evaluation.records import read_records
from orchestrator.runner import Orchestrator
from orchestrator.store import CompletionCache
from orchestrator.testing.fake_backend import FakeBackend
from orchestrator.types import Problem

SC4 = EvalTarget("sc4", {"strategy": "self_consistency", "n": 4, "max_tokens": 64})
RS4 = EvalTarget("rs4", {"strategy": "repeated_sampling", "n": 4, "max_tokens": 64})


def problems(k: int = 6) -> list[Problem]:
    return [Problem(question=f"Question {i}?", reference="42", id=f"p{i}") for i in range(k)]


def runner(
    backend: FakeBackend,
    out: Path,
    targets: list[EvalTarget] | None = None,
    cache: CompletionCache | None = None,
    **kw: object,
) -> EvalRunner:
    orch = Orchestrator([backend], cache=cache)
    return EvalRunner(
        orch,
        kw.pop("probs", None) or problems(),
        targets or [SC4],
        out,
        progress=False,
        **kw,  # type: ignore[arg-type]
    )


async def test_writes_one_record_per_problem_and_a_summary(tmp_path: Path) -> None:
    fake = FakeBackend(seed=1)
    summaries = await runner(fake, tmp_path).run()
    recs = read_records(tmp_path / "sc4" / "records.jsonl")
    assert sorted(r.id for r in recs) == [f"p{i}" for i in range(6)]
    for r in recs:
        assert len(r.candidates) == 4 and len(r.candidates_correct) == 4
        assert r.correct == (r.answer == "42")
        assert r.candidates_correct == [a == "42" for a in r.candidates]
        assert r.usage.completion_tokens > 0 and r.trace_id and r.run_id
    s = summaries[0]
    assert s.problems == 6
    assert s.accuracy == pytest.approx(sum(r.correct for r in recs) / 6)
    assert set(s.pass_at_k) == {1, 2, 4}
    summary = json.loads((tmp_path / "sc4" / "summary.json").read_text())
    assert summary["problems"] == 6
    assert (tmp_path / "report.md").is_file()
    meta = json.loads((tmp_path / "sc4" / "meta.json").read_text())
    assert meta["spec"] == SC4.spec and meta["invocations"][0]["ran"] == 6


async def test_resume_makes_no_backend_calls_and_keeps_records(tmp_path: Path) -> None:
    fake = FakeBackend(seed=1)
    await runner(fake, tmp_path).run()
    before = (tmp_path / "sc4" / "records.jsonl").read_bytes()
    calls = fake.calls
    again = runner(fake, tmp_path, resume=True)
    assert again.pending == 0
    await again.run()
    assert fake.calls == calls
    assert (tmp_path / "sc4" / "records.jsonl").read_bytes() == before


async def test_existing_records_are_never_overwritten_without_resume(tmp_path: Path) -> None:
    await runner(FakeBackend(), tmp_path).run()
    with pytest.raises(ConfigError, match="--resume"):
        runner(FakeBackend(), tmp_path)


async def test_resume_with_another_spec_is_refused(tmp_path: Path) -> None:
    await runner(FakeBackend(), tmp_path).run()
    other = EvalTarget("sc4", {"strategy": "self_consistency", "n": 8})
    with pytest.raises(ConfigError, match="strategy spec"):
        runner(FakeBackend(), tmp_path, [other], resume=True)


async def test_second_strategy_reuses_the_first_ones_samples(tmp_path: Path) -> None:
    cache = CompletionCache(f"sqlite:///{tmp_path / 'cache.db'}")
    fake = FakeBackend(seed=3)
    try:
        first = runner(fake, tmp_path / "a", [SC4], cache=cache)
        await first.run()
        calls = fake.calls
        assert calls == 6
        _, rs = await runner(fake, tmp_path / "b", [SC4, RS4], cache=cache).run()
    finally:
        await cache.aclose()
    assert fake.calls == calls  # both strategies were served from the cache
    recs_a = {r.id: r for r in read_records(tmp_path / "a" / "sc4" / "records.jsonl")}
    recs_b = {r.id: r for r in read_records(tmp_path / "b" / "rs4" / "records.jsonl")}
    for pid, rec in recs_b.items():
        assert rec.candidates == recs_a[pid].candidates  # the very same samples
        assert rec.usage.cached_tokens == rec.usage.completion_tokens > 0
        assert rec.usage.calls == 1
    assert rs.cached_tokens_total == rs.completion_tokens_total


async def test_failed_problem_gets_no_record_and_resume_retries_it(tmp_path: Path) -> None:
    fake = FakeBackend(fail_calls=[2])
    r = runner(fake, tmp_path, concurrency=1)
    await r.run()
    assert r.failed == 1
    assert len(read_records(tmp_path / "sc4" / "records.jsonl")) == 5
    again = runner(FakeBackend(), tmp_path, resume=True)
    assert again.pending == 1
    await again.run()
    ids = [rec.id for rec in read_records(tmp_path / "sc4" / "records.jsonl")]
    assert sorted(ids) == [f"p{i}" for i in range(6)]


async def test_cancel_keeps_finished_records_and_resume_completes_once(tmp_path: Path) -> None:
    fake = FakeBackend(latency=0.05)
    r = runner(fake, tmp_path, probs=problems(20), concurrency=2)
    task = asyncio.create_task(r.run())
    path = tmp_path / "sc4" / "records.jsonl"
    while not path.exists() or len(path.read_bytes().splitlines()) < 4:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    done = len(read_records(path))
    assert 4 <= done < 20
    meta = json.loads((tmp_path / "sc4" / "meta.json").read_text())
    assert meta["invocations"][-1]["interrupted"] is True
    again = runner(FakeBackend(), tmp_path, probs=problems(20), resume=True)
    assert again.pending == 20 - done
    await again.run()
    ids = [line for line in path.read_text().splitlines()]
    assert len(ids) == 20
    assert sorted(rec.id for rec in read_records(path)) == sorted(f"p{i}" for i in range(20))


async def test_missing_capability_fails_before_any_call(tmp_path: Path) -> None:
    from orchestrator.backends.base import Capabilities

    fake = FakeBackend(capabilities=Capabilities())
    target = EvalTarget("bon", {"strategy": "best_of_n", "n": 2, "verifier": "mean_logprob"})
    with pytest.raises(CapabilityError):
        await runner(fake, tmp_path, [target]).run()
    assert fake.calls == 0


def test_problem_seed_is_stable() -> None:
    assert problem_seed(0, "p1") == problem_seed(0, "p1") != problem_seed(1, "p1")


def test_bad_inputs_are_named() -> None:
    orch = Orchestrator([FakeBackend()])
    with pytest.raises(ConfigError, match="concurrency"):
        EvalRunner(orch, problems(), [SC4], Path("x"), concurrency=0)
    with pytest.raises(ConfigError, match="unique id"):
        EvalRunner(orch, [Problem(question="q")], [SC4], Path("x"))
    with pytest.raises(ConfigError, match="labels"):
        EvalRunner(orch, problems(), [SC4, SC4], Path("x"))

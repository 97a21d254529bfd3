"""Tests for orchestrator.evaluation.summary and orchestrator.evaluation.report."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.evaluation.records import ProblemRecord, RecordFile, write_json
from orchestrator.evaluation.report import (
    comparison_table,
    find_eval_dirs,
    write_report,
)
from orchestrator.evaluation.summary import Summary, load_summary_dir, summarize
from orchestrator.stats import wilson_interval
from orchestrator.types import Usage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def record(
    pid: str,
    *,
    answer: str | None = None,
    correct: bool = False,
    candidates: list[str | None] | None = None,
    flags: list[bool] | None = None,
    usage: Usage | None = None,
    seconds: float = 0.0,
    budget_exhausted: bool = False,
    strategy: str = "vote",
) -> ProblemRecord:
    return ProblemRecord(
        id=pid,
        strategy=strategy,
        question=f"question {pid}",
        reference="ref",
        answer=answer,
        correct=correct,
        candidates=candidates or [],
        candidates_correct=flags or [],
        usage=usage or Usage(),
        seconds=seconds,
        budget_exhausted=budget_exhausted,
    )


def sampled_records() -> list[ProblemRecord]:
    """Five problems; the fewest candidates of a problem with any is 4, so k = 1, 2, 4.

    Per problem, pass@1/2/4 and majority@1/2/4 (worked out by hand):
      p1 (8 x "7", all correct): pass 1, 1, 1; majority 1, 1, 1
      p2 ("3","3","5","3", only "5" correct): pass 1/4, 1/2, 1; majority 1/4, 1/4, 0
      p3 (None, None, "1", "2", none correct): all 0
      p4 ("1/2", "0.5", "9", "9", the halves correct): pass 1/2, 5/6, 1; majority 1/2, 1/2, 1/2
         ("1/2" and "0.5" are one group, so k=4 is a tie between two groups of two)
      p5 (no candidate): all 0
    """
    return [
        record(
            "p1",
            answer="7",
            correct=True,
            candidates=["7"] * 8,
            flags=[True] * 8,
            usage=Usage(
                completion_tokens=100, prompt_tokens=50, calls=4, cost_usd=0.01, cached_tokens=20
            ),
            seconds=1.0,
        ),
        record(
            "p2",
            answer="3",
            candidates=["3", "3", "5", "3"],
            flags=[False, False, True, False],
            usage=Usage(completion_tokens=200, prompt_tokens=60, calls=4, cost_usd=0.02),
            seconds=3.0,
        ),
        record(
            "p3",
            candidates=[None, None, "1", "2"],
            flags=[False] * 4,
            budget_exhausted=True,
        ),
        record(
            "p4",
            answer="1/2",
            correct=True,
            candidates=["1/2", "0.5", "9", "9"],
            flags=[True, True, False, False],
        ),
        record("p5"),
    ]


def single_records(strategy: str = "greedy") -> list[ProblemRecord]:
    return [
        record("q1", answer="1", correct=True, candidates=["1"], flags=[True], strategy=strategy),
        record("q2", answer="2", candidates=["2"], flags=[False], strategy=strategy),
        record("q3", strategy=strategy),
    ]


def test_summarize_accuracy_and_interval() -> None:
    s = summarize(sampled_records(), label="vote")
    assert (s.label, s.problems, s.correct, s.answered) == ("vote", 5, 2, 3)
    assert s.accuracy == pytest.approx(0.4)
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(2, 5))
    assert s.ci_low < 0.4 < s.ci_high


def test_summarize_pass_and_majority_at_k() -> None:
    s = summarize(sampled_records(), label="vote")
    assert list(s.pass_at_k) == [1, 2, 4]
    assert s.pass_at_k[1] == pytest.approx((1 + 0.25 + 0 + 0.5 + 0) / 5)
    assert s.pass_at_k[2] == pytest.approx((1 + 0.5 + 0 + 5 / 6 + 0) / 5)
    assert s.pass_at_k[4] == pytest.approx((1 + 1 + 0 + 1 + 0) / 5)
    assert list(s.majority_at_k) == [1, 2, 4]
    assert s.majority_at_k[1] == pytest.approx((1 + 0.25 + 0 + 0.5 + 0) / 5)
    assert s.majority_at_k[2] == pytest.approx((1 + 0.25 + 0 + 0.5 + 0) / 5)
    assert s.majority_at_k[4] == pytest.approx((1 + 0 + 0 + 0.5 + 0) / 5)
    assert s.power_law is not None
    assert s.power_law.points == 3
    assert s.power_law.a < 0
    assert s.max_k == 4


def test_summarize_tokens_calls_cost_and_time() -> None:
    s = summarize(sampled_records(), label="vote", wall_seconds=10.0, spec={"dataset": "toy"})
    assert (s.completion_tokens_total, s.completion_tokens_mean) == (300, pytest.approx(60.0))
    assert (s.prompt_tokens_total, s.prompt_tokens_mean) == (110, pytest.approx(22.0))
    assert s.cached_tokens_total == 20
    assert (s.calls_total, s.calls_mean) == (8, pytest.approx(1.6))
    assert (s.cost_usd_total, s.cost_usd_mean) == (pytest.approx(0.03), pytest.approx(0.006))
    assert s.budget_exhausted == 1
    assert s.seconds_mean == pytest.approx(0.8)
    assert s.wall_seconds == 10.0
    assert s.tokens_per_second == pytest.approx((300 - 20) / 10.0)
    assert s.spec == {"dataset": "toy"}
    assert summarize(sampled_records(), label="vote").tokens_per_second is None


def test_summarize_is_deterministic() -> None:
    many = [
        record(
            f"m{i}",
            candidates=[str(j % 4) for j in range(30)],
            flags=[j % 4 == 0 for j in range(30)],
        )
        for i in range(3)
    ]  # C(30, 16) subsets: majority@16 goes through Monte Carlo
    first = summarize(many, label="m")
    assert summarize(many, label="m") == first
    assert 16 in first.majority_at_k


def test_summarize_single_sample_strategy_has_no_curves() -> None:
    s = summarize(single_records(), label="greedy")
    assert s.pass_at_k == {} and s.majority_at_k == {}
    assert s.power_law is None and s.max_k is None
    assert (s.problems, s.correct, s.answered) == (3, 1, 2)


def test_summarize_empty() -> None:
    s = summarize([], label="none")
    assert (s.problems, s.accuracy, s.ci_low, s.ci_high) == (0, 0.0, 0.0, 1.0)
    assert s.completion_tokens_mean == 0.0 and s.pass_at_k == {}


def test_summarize_rejects_mismatched_candidates() -> None:
    bad = record("x", candidates=["1", "2"], flags=[True])
    with pytest.raises(ValueError, match="'x'"):
        summarize([bad], label="bad")


def test_summary_json_round_trip_and_load_summary_dir(tmp_path: Path) -> None:
    s = summarize(sampled_records(), label="vote", wall_seconds=5.0)
    write_json(tmp_path / "summary.json", s.model_dump(mode="json"))
    loaded, records = load_summary_dir(tmp_path)
    assert loaded == s
    assert records == []


def test_load_summary_dir_recomputes_from_records(tmp_path: Path) -> None:
    rf = RecordFile(tmp_path / "records.jsonl")
    for rec in sampled_records():
        rf.append(rec)
    rf.close()
    loaded, records = load_summary_dir(tmp_path)
    assert loaded == summarize(sampled_records(), label="vote")
    assert [r.id for r in records] == ["p1", "p2", "p3", "p4", "p5"]
    with pytest.raises(ValueError, match=r"summary\.json"):
        load_summary_dir(tmp_path / "missing")


def test_comparison_table_lists_every_label_and_number() -> None:
    vote = summarize(sampled_records(), label="vote")
    greedy = summarize(single_records(), label="greedy | t=0")
    table = comparison_table([vote, greedy])
    lines = table.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| Strategy |")
    vote_row, greedy_row = lines[2], lines[3]
    lo, hi = wilson_interval(2, 5)
    for text in [
        "vote",
        "| 5 |",
        f"0.400 [{lo:.2f}, {hi:.2f}]",
        "0.600 (k=4)",
        "| 60.0 |",
        "| 1.60 |",
        "| 0.0300 |",
        "| 20 |",
        "| 0.80 |",
        "| 1 |",
    ]:
        assert text in vote_row, text
    assert "greedy \\| t=0" in greedy_row
    assert "| - |" in greedy_row
    assert "0.333 [" in greedy_row


def test_write_report_writes_pngs_and_markdown(tmp_path: Path) -> None:
    vote = summarize(sampled_records(), label="vote")
    greedy = summarize(
        [*single_records()[:2], record("q3", usage=Usage(completion_tokens=30))], label="greedy"
    )
    out = tmp_path / "report"
    written = write_report([vote, greedy], out)
    assert [p.name for p in written] == ["report.md", "accuracy_vs_tokens.png", "coverage.png"]
    for png in written[1:]:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    text = (out / "report.md").read_text()
    assert comparison_table([vote, greedy]) in text
    assert "(accuracy_vs_tokens.png)" in text and "(coverage.png)" in text


def test_write_report_without_pass_at_k_skips_coverage(tmp_path: Path) -> None:
    greedy = summarize(single_records(), label="greedy")  # 0 tokens: linear x axis
    written = write_report([greedy], tmp_path)
    assert [p.name for p in written] == ["report.md", "accuracy_vs_tokens.png"]
    assert written[1].read_bytes().startswith(PNG_MAGIC)
    assert not (tmp_path / "coverage.png").exists()
    assert "coverage.png" not in (tmp_path / "report.md").read_text()


def test_write_report_with_a_summary_lacking_a_fit(tmp_path: Path) -> None:
    s = Summary(
        label="two-k",
        problems=1,
        correct=1,
        accuracy=1.0,
        ci_low=0.2,
        ci_high=1.0,
        answered=1,
        pass_at_k={1: 0.5, 2: 1.0},
        completion_tokens_mean=12.0,
    )
    written = write_report([s], tmp_path)
    assert (tmp_path / "coverage.png").read_bytes().startswith(PNG_MAGIC)
    assert len(written) == 3


def test_find_eval_dirs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "records.jsonl").write_text("")
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "c" / "summary.json").write_text("{}")
    (tmp_path / "b" / "c" / "records.jsonl").write_text("")
    (tmp_path / "d").mkdir()
    expected = [tmp_path / "a", tmp_path / "b" / "c"]
    assert find_eval_dirs([tmp_path]) == expected
    assert find_eval_dirs([tmp_path / "b" / "c", tmp_path]) == expected
    assert find_eval_dirs([str(tmp_path / "a")]) == [tmp_path / "a"]
    for bad in [tmp_path / "d", tmp_path / "nowhere", tmp_path / "a" / "records.jsonl"]:
        with pytest.raises(ValueError, match="expected an evaluation directory") as info:
            find_eval_dirs([bad])
        assert str(bad) in str(info.value)

"""Test helpers shipped with ttc: FakeBackend and the conformance suites.

``VerifierConformance`` (``orchestrator.testing.verifier_suite``) and ``StrategyConformance``
(``orchestrator.testing.strategy_suite``) are imported on first access:
it needs pytest, which production code that only uses FakeBackend (the ``fake`` backend kind)
does not have.
"""

from typing import TYPE_CHECKING, Any

from orchestrator.testing.fake_backend import FakeBackend, default_text

if TYPE_CHECKING:
    from orchestrator.testing.strategy_suite import StrategyConformance
    from orchestrator.testing.verifier_suite import VerifierConformance

__all__ = ["FakeBackend", "StrategyConformance", "VerifierConformance", "default_text"]


def __getattr__(name: str) -> Any:
    if name == "VerifierConformance":
        from orchestrator.testing.verifier_suite import VerifierConformance

        return VerifierConformance
    if name == "StrategyConformance":
        from orchestrator.testing.strategy_suite import StrategyConformance

        return StrategyConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

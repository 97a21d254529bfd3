"""Test helpers shipped with ttc: the FakeBackend, fake HTTP servers and the conformance suites.

Nothing in production imports this package (a lint contract checks it). The conformance suites
need pytest, so they are imported from their own modules: ``orchestrator.testing.strategy_suite``
(``StrategyConformance``) and ``orchestrator.testing.verifier_suite`` (``VerifierConformance``).
"""

from orchestrator.testing.fake_backend import FakeBackend, default_text

__all__ = ["FakeBackend", "default_text"]

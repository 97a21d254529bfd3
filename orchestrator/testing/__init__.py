"""Test helpers shipped with ttc: FakeBackend (and the conformance suites, as they arrive)."""

from orchestrator.testing.fake_backend import FakeBackend, default_text

__all__ = ["FakeBackend", "default_text"]

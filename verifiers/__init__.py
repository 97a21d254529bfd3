"""Verifiers: score candidates. Importing this package registers the built-ins.

See ``verifiers.base`` for the contract and ``orchestrator.registry.verifiers`` for lookup.
"""

from verifiers import builtin
from verifiers.base import Verifier, VerifierConfig, build_verifier

__all__ = ["Verifier", "VerifierConfig", "build_verifier", "builtin"]

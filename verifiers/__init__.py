"""Verifiers: score candidates. Importing this package registers the built-ins.

See ``verifiers.base`` for the contract and ``orchestrator.registry.verifiers`` for lookup.
"""

from verifiers import (
    builtin,
    combinators,
    format_check,
    llm_judge,
    python,
    reward_model,
    self_eval,
    unit_tests,
)
from verifiers.base import Verifier, VerifierConfig, build_verifier

__all__ = [
    "Verifier",
    "VerifierConfig",
    "build_verifier",
    "builtin",
    "combinators",
    "format_check",
    "llm_judge",
    "python",
    "reward_model",
    "self_eval",
    "unit_tests",
]

"""Strategies: how to spend test-time compute. Importing this package registers the built-ins.

See ``strategies.base`` for the contract and ``orchestrator.registry.strategies`` for lookup.
"""

from strategies import best_of_n, repeated_sampling, self_consistency, single
from strategies.base import SamplingConfig, Strategy, StrategyConfig, build_strategy

__all__ = [
    "SamplingConfig",
    "Strategy",
    "StrategyConfig",
    "best_of_n",
    "build_strategy",
    "repeated_sampling",
    "self_consistency",
    "single",
]

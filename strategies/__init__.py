"""Strategies: how to spend test-time compute. Importing this package registers the built-ins.

See ``strategies.base`` for the contract and ``orchestrator.registry.strategies`` for lookup.
"""

from strategies import (
    adaptive_self_eval,
    best_of_n,
    cascade,
    div_se,
    early_stopping_sc,
    repeated_sampling,
    rpc,
    self_consistency,
    sift,
    single,
    verified_resampling,
)
from strategies.base import SamplingConfig, Strategy, StrategyConfig, build_strategy

__all__ = [
    "SamplingConfig",
    "Strategy",
    "StrategyConfig",
    "adaptive_self_eval",
    "best_of_n",
    "build_strategy",
    "cascade",
    "div_se",
    "early_stopping_sc",
    "repeated_sampling",
    "rpc",
    "self_consistency",
    "sift",
    "single",
    "verified_resampling",
]

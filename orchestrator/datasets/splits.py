"""Deterministic dev/test splits by a stable hash of the problem id.

Each problem id is mapped to a number in [0, 1): the first 64 bits of
``sha256(f"{salt}:{id}")`` divided by 2**64. The mapping depends on nothing but the salt and the
id (not on Python's randomised ``hash()``, the process, the order or the other problems), so a
problem lands in the same split in every run, and adding or removing problems never moves the
others.

A split spec is ``NAME:FRACTION`` with ``0 < FRACTION < 1``:

- ``dev:F``: the problems whose value is < F (about a fraction F of them);
- ``test:F`` (or its synonym ``rest:F``): those whose value is >= F, the complement of ``dev:F``.

So ``dev:0.2`` and ``test:0.2`` are disjoint and together cover every problem. Splits of the same
dataset with a smaller fraction nest: ``dev:0.1`` is a subset of ``dev:0.2``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.errors import DatasetError
from orchestrator.types import Problem

__all__ = [
    "DEFAULT_SALT",
    "SPLIT_NAMES",
    "SplitSpec",
    "parse_split",
    "split_problems",
    "split_value",
]

DEFAULT_SALT = "ttc-split"
"""The salt of :func:`split_value` unless another is given; changing it reshuffles every split."""

SPLIT_NAMES: tuple[str, ...] = ("dev", "test", "rest")
_FORM = "NAME:FRACTION with NAME one of dev, test, rest and 0 < FRACTION < 1, e.g. 'dev:0.2'"


@dataclass(frozen=True)
class SplitSpec:
    """A parsed split: ``name`` (``dev``, ``test`` or ``rest``) and ``fraction`` in (0, 1)."""

    name: str
    fraction: float

    @property
    def takes_low(self) -> bool:
        """True for ``dev`` (values below the fraction), False for ``test``/``rest``."""
        return self.name == "dev"

    def __str__(self) -> str:
        return f"{self.name}:{self.fraction:g}"


def parse_split(spec: str) -> SplitSpec:
    """Parse ``NAME:FRACTION`` (surrounding spaces allowed; the name is case-insensitive).

    Raises:
        DatasetError: naming the bad part (the name or the fraction) and the allowed form.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise DatasetError(f"bad split {spec!r}: expected {_FORM}")
    name_part, fraction_part = (p.strip() for p in spec.split(":"))
    name = name_part.lower()
    if name not in SPLIT_NAMES:
        raise DatasetError(
            f"bad split {spec!r}: unknown split name {name_part!r}; expected {_FORM}"
        )
    try:
        fraction = float(fraction_part)
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:  # also rejects nan
        raise DatasetError(
            f"bad split {spec!r}: fraction {fraction_part!r} is not a number strictly between "
            f"0 and 1; expected {_FORM}"
        )
    return SplitSpec(name, fraction)


def split_value(problem_id: str, salt: str = DEFAULT_SALT) -> float:
    """The problem's position in [0, 1): the first 64 bits of ``sha256(f"{salt}:{id}")`` / 2**64."""
    digest = hashlib.sha256(f"{salt}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_problems(
    problems: Iterable[Problem], spec: str | SplitSpec, *, salt: str = DEFAULT_SALT
) -> list[Problem]:
    """The problems of one split, in their original order.

    Args:
        problems: problems with ids (``load_jsonl`` and ``synthetic_problems`` always set them).
        spec: ``NAME:FRACTION`` (see the module docstring) or a parsed :class:`SplitSpec`.
        salt: mixed into the hash; the same salt gives the same split everywhere.

    Raises:
        DatasetError: a bad spec, or a problem without an id (its position is named).
    """
    parsed = spec if isinstance(spec, SplitSpec) else parse_split(spec)
    out: list[Problem] = []
    for i, problem in enumerate(problems):
        if not problem.id:
            raise DatasetError(
                f"cannot split: problem #{i} ({problem.question[:60]!r}) has no id; splits hash "
                f"the id, so give every problem a stable id"
            )
        low = split_value(problem.id, salt) < parsed.fraction
        if low == parsed.takes_low:
            out.append(problem)
    return out

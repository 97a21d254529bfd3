"""Approach lists for DIV-SE / IDIV-SE: the default list, parsing a model's list, the YAML file.

Naik et al. 2023 ("Diversity of Thought Improves Reasoning Abilities of LLMs", arXiv:2310.07088)
build their prompts offline, once per task: the model is asked for approaches suited to the
problem type ("work backwards", "write an equation", ...), and the best k (3-5) are kept. The
asking is ``ttc approaches`` (``orchestrator.cli.approaches``); this module holds what the
strategies and that command share:

- ``approaches_prompt(question_type, m)``: the request; ``parse_numbered_list`` reads the
  completion (numbered items, else bullets; markdown stripped; duplicates dropped).
- ``write_approaches`` / ``load_approaches``: the YAML file ``{question_type: ..., approaches:
  [...]}`` that the strategies read through ``approaches_file`` (a bare list is accepted too).
- ``MATH_APPROACHES``: the strategies' default list (the same as ``configs/approaches/math.yaml``).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from orchestrator.config import load_yaml
from orchestrator.errors import ConfigError

MATH_APPROACHES: tuple[str, ...] = (
    "Break the problem into small steps and compute each one in order",
    "Work backwards from the quantity the question asks for to the given facts",
    "Translate the problem into an equation and solve it with algebra",
    "Organise the known quantities in a table and fill it in step by step",
    "Estimate the answer first, then compute it exactly and check it against the estimate",
)
"""Default approaches for arithmetic and math word problems (configs/approaches/math.yaml)."""

MAX_APPROACH_CHARS = 200
"""Longer items are cut at a word boundary: an approach is a phrase, not a solution."""

PROMPT = (
    "List {m} different approaches to solving questions of this type: {question_type}.\n"
    "Each approach is one short instruction (at most 15 words) naming a distinct method, for "
    'example "Work backwards from the quantity the question asks for".\n'
    'Write them as a numbered list, one per line ("1. ...", "2. ..."), and nothing else.'
)

FILE_HEADER = "# Approaches for div_se / idiv_se (their approaches_file), by `ttc approaches`.\n"

_NUMBERED_RE = re.compile(r"^\s*[*_#>]*\s*\(?(\d{1,2})(?:[.):]|\s+-)\s*(.+)$")
_BULLET_RE = re.compile(r"^\s*[-*\u2022+]\s+(.+)$")
_MARKUP_RE = re.compile(r"\*\*|__|`")


def approaches_prompt(question_type: str, m: int) -> str:
    """The request for ``m`` approaches to questions of ``question_type``."""
    return PROMPT.format(m=m, question_type=question_type.strip())


def clean_item(item: str) -> str:
    """An item without markdown, quotes, surrounding space or a trailing period, length-capped."""
    text = " ".join(_MARKUP_RE.sub("", item).split())
    text = text.strip(" \"'").rstrip(".;:,").strip(" \"'")
    if len(text) > MAX_APPROACH_CHARS:
        text = text[:MAX_APPROACH_CHARS].rsplit(" ", 1)[0]
    return text


def _key(item: str) -> str:
    return "".join(ch for ch in item.lower() if ch.isalnum())


def dedup(items: list[str]) -> list[str]:
    """``items`` without repeats (case, spacing and punctuation ignored), first kept."""
    seen: set[str] = set()
    out: list[str] = []
    for item in items:
        key = _key(item)
        if key and key not in seen:
            seen.add(key)
            out.append(item)
    return out


def parse_numbered_list(text: str) -> list[str]:
    """The items of the numbered list in ``text`` (``1.``, ``2)``, ``(3)``, ``4:``, ``5 -``).

    Lines that are not items (a preamble, continuation lines, a closing remark) are ignored.
    Without any numbered item, bullet items (``-``, ``*``, ``•``) are taken instead. Items are
    cleaned (``clean_item``), items shorter than 3 characters dropped, duplicates removed.
    """
    lines = text.splitlines()
    items = [m.group(2) for line in lines if (m := _NUMBERED_RE.match(line))]
    if not items:
        items = [m.group(1) for line in lines if (m := _BULLET_RE.match(line))]
    return dedup([c for c in map(clean_item, items) if len(c) >= 3])


def load_approaches(path: str | Path) -> list[str]:
    """The approaches of a YAML file: ``{approaches: [...], ...}`` or a bare list of strings.

    Raises:
        ConfigError: unreadable file, invalid YAML, wrong shape, or an empty list.
    """
    data = load_yaml(path)
    items = data.get("approaches") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ConfigError(
            f"{path}: expected a non-empty list of approaches, as a list or under `approaches:`"
        )
    bad = [i for i, a in enumerate(items) if not isinstance(a, str) or not a.strip()]
    if bad:
        raise ConfigError(f"{path}: approach {bad[0] + 1} is not a non-empty string")
    return [a.strip() for a in items]


def write_approaches(
    path: str | Path, question_type: str, approaches: list[str], *, force: bool = False
) -> Path:
    """Write ``{question_type, approaches}`` as YAML (creating directories); return the path.

    Raises:
        FileExistsError: ``path`` exists and ``force`` is False.
    """
    p = Path(path)
    if p.exists() and not force:
        raise FileExistsError(f"{p} exists; pass --force to overwrite it")
    p.parent.mkdir(parents=True, exist_ok=True)
    data = {"question_type": question_type, "approaches": list(approaches)}
    p.write_text(FILE_HEADER + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100))
    return p

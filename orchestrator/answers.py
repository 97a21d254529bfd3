"""Final-answer extraction, normalisation and equivalence for voting and grading.

``extract_answer`` pulls the final answer out of a model completion (or a dataset solution),
``normalize_answer`` maps it to a canonical string used as a vote key, ``answers_equivalent``
decides whether two answers are the same (string, then numeric, then ``math_verify``), and
``group_answers`` clusters a list of answers into vote groups.

``math_verify`` guards its work with ``signal.alarm``, which only works in the main thread. Off
the main thread its timeouts are disabled, so inputs longer than ``_MAX_VERIFY_CHARS`` are not
sent to it at all.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import lru_cache
from typing import Any

ANSWER_FORMATS: tuple[str, ...] = (
    "auto",
    "boxed",
    "gsm8k",
    "answer_is",
    "number",
    "choice",
    "text",
)
"""The formats accepted by :func:`extract_answer`."""

_MV_TIMEOUT_SECONDS = 5
_MAX_VERIFY_CHARS = 500
_REL_TOL = 1e-6

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_PROSE_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
"""A word of three or more letters that is not a LaTeX command (``\\frac``, ``\\text``)."""
_ANSWER_IS_RE = re.compile(r"\b(?:final\s+answer|answer)\b\s*(?:is\b|:)", re.IGNORECASE)
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:/\d+(?![\d.]))?"
)
_CHOICE_ANCHORED_RE = re.compile(
    r"\b(?i:answer)\b\s*(?i:is\b|:)?[\s:*]*(?:\(([A-Ea-e])\)|([A-E])(?![A-Za-z0-9]))"
)
_CHOICE_PAREN_RE = re.compile(r"\(([A-E])\)")
_CHOICE_ALONE_RE = re.compile(r"\(?([A-E])\)?[.:]?")
_PLAIN_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SLASH_FRACTION_RE = re.compile(r"(-?)(\d+)/(\d+)")
_LATEX_FRACTION_RE = re.compile(r"(-?)\\frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}")
_SHORT_FRAC_RE = re.compile(r"\\frac(?:\{([^{}]*)\}|([0-9A-Za-z]))(?:\{([^{}]*)\}|([0-9A-Za-z]))")
_SHORT_SQRT_RE = re.compile(r"\\sqrt([0-9A-Za-z])")
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right)(?:\.|(?![A-Za-z]))")
_TRAILING_UNIT_RE = re.compile(r"(?:\\%|%|\^\s*\\circ|\^\s*\{\\circ\})\s*$")
_PLAIN_WORDS_RE = re.compile(r"[A-Za-z][A-Za-z '\-]*")


def _match_brace(text: str, open_idx: int) -> int | None:
    """Return the index of the ``}`` closing the ``{`` at ``open_idx``, or None if unbalanced.

    Escaped characters (``\\{``, ``\\}``, ``\\\\``) are skipped, so they never count as braces.
    """
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _extract_boxed(text: str) -> str | None:
    """Return the content of the last complete, non-empty ``\\boxed{}``/``\\fbox{}``."""
    for m in reversed(list(_BOXED_RE.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            close = _match_brace(text, i)
            content = text[i + 1 : close].strip() if close is not None else ""
        else:  # brace-less form such as ``\boxed 5``
            content = re.split(r"[\s$]", text[i:], maxsplit=1)[0]
        if content:
            return content
    return None


def _extract_gsm8k(text: str) -> str | None:
    """Return the first line after the last ``####``, with commas in numbers removed."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    line = text[idx + 4 :].strip().split("\n", 1)[0].strip()
    line = re.sub(r"(?<=\d),(?=\d)", "", line)
    return line or None


def _unwrap_math(s: str) -> str:
    """Strip one level of ``$...$``, ``$$...$$``, ``\\(...\\)`` or ``\\[...\\]`` delimiters."""
    s = s.strip()
    if len(s) > 1 and s.startswith("$") and s.endswith("$"):
        return s.strip("$").strip()
    if s[:2] in ("\\(", "\\[") and s[-2:] in ("\\)", "\\]"):
        return s[2:-2].strip()
    return s


def _clean_answer_tail(tail: str) -> str | None:
    """Turn the text after an "answer is"/"answer:" marker into an answer string."""
    tail = tail.lstrip(" \t\n*:")
    if _BOXED_RE.search(tail):
        return _extract_boxed(tail)
    if tail.startswith("$"):
        delim = "$$" if tail.startswith("$$") else "$"
        end = tail.find(delim, len(delim))
        if end > 0:
            return tail[len(delim) : end].strip() or None
    line = tail.split("\n", 1)[0]
    line = re.split(r"\.\s", line, maxsplit=1)[0].strip()
    while True:
        stripped = line.rstrip()
        stripped = stripped.removesuffix(".").removesuffix("**").removeprefix("**").strip()
        if stripped == line:
            break
        line = stripped
    answer = _unwrap_math(line)
    if _PROSE_WORD_RE.search(answer) and (numbers := _NUMBER_RE.findall(answer)):
        # "the answer is always 37", "the answer is 37 apples": the number is the answer
        return numbers[0].replace(",", "")
    return answer or None


def _extract_answer_is(text: str) -> str | None:
    """Return the answer after the last usable "answer is"/"answer:" marker."""
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        ans = _clean_answer_tail(text[m.end() :])
        if ans:
            return ans
    return None


def _extract_number(text: str) -> str | None:
    """Return the last number (integer, decimal or ``a/b`` fraction) without thousands commas."""
    matches = _NUMBER_RE.findall(text)
    return matches[-1].replace(",", "") if matches else None


def _extract_choice(text: str) -> str | None:
    """Return a multiple-choice letter A-E, preferring the last "answer is (X)"/"Answer: X"."""
    anchored = list(_CHOICE_ANCHORED_RE.finditer(text))
    if anchored:
        m = anchored[-1]
        return (m.group(1) or m.group(2)).upper()
    parens = _CHOICE_PAREN_RE.findall(text)
    if parens:
        return str(parens[-1])
    alone = _CHOICE_ALONE_RE.fullmatch(text.strip().strip("*").strip())
    return alone.group(1) if alone else None


def _extract_text(text: str) -> str | None:
    """Return the whole stripped text, or None when it is empty."""
    return text.strip() or None


_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "boxed": _extract_boxed,
    "gsm8k": _extract_gsm8k,
    "answer_is": _extract_answer_is,
    "number": _extract_number,
    "choice": _extract_choice,
    "text": _extract_text,
}
_AUTO_ORDER: tuple[str, ...] = ("boxed", "gsm8k", "answer_is", "number")


def extract_answer(text: str, fmt: str = "auto") -> str | None:
    """Extract the final answer from a completion or solution text.

    Args:
        text: the model output or reference solution.
        fmt: one of :data:`ANSWER_FORMATS`. ``boxed``: content of the last ``\\boxed{}`` or
            ``\\fbox{}`` (nested braces matched); ``gsm8k``: first line after the last
            ``####``; ``answer_is``: what follows the last "answer is"/"answer:"/"Final
            answer:"; ``number``: the last number; ``choice``: a letter A-E; ``text``: the
            whole stripped text; ``auto``: boxed, gsm8k, answer_is, then number.

    Returns:
        The raw (unnormalised) answer string, or None when nothing was found.

    Raises:
        ValueError: if ``fmt`` is not one of :data:`ANSWER_FORMATS`.
    """
    if fmt not in ANSWER_FORMATS:
        raise ValueError(
            f"unknown answer format {fmt!r}; allowed formats: {', '.join(ANSWER_FORMATS)}"
        )
    for name in _AUTO_ORDER if fmt == "auto" else (fmt,):
        ans = _EXTRACTORS[name](text)
        if ans is not None:
            return ans
    return None


def _unwrap_commands(s: str, pattern: re.Pattern[str]) -> str:
    """Replace every ``\\cmd{content}`` matched by ``pattern`` (ending at ``{``) by its content."""
    while (m := pattern.search(s)) is not None:
        close = _match_brace(s, m.end() - 1)
        if close is None:
            break
        s = s[: m.start()] + s[m.end() : close] + s[close + 1 :]
    return s


def _canonical_number(s: str) -> str:
    """Canonicalise a plain decimal: ``18.0`` -> ``18``, ``0.50`` -> ``0.5``, ``.5`` -> ``0.5``."""
    try:
        d = Decimal(s)
    except InvalidOperation:
        return s
    if d == d.to_integral_value():
        return str(int(d))
    return format(d.normalize(), "f")


def normalize_answer(ans: str) -> str:
    """Return a conservative canonical form of an answer, used as a vote key.

    Strips whitespace, ``$`` and math delimiters, ``\\text{}``-like wrappers, trailing periods,
    a trailing ``%``/``\\%``/degree sign, ``\\left``/``\\right``; maps ``\\dfrac``/``\\tfrac``
    to ``\\frac`` and ``\\frac12`` to ``\\frac{1}{2}``; removes thousands separators and
    canonicalises plain numbers; lowercases answers made of plain words only.

    Args:
        ans: a raw answer, as returned by :func:`extract_answer`.

    Returns:
        The normalised answer (possibly empty).
    """
    s = ans.strip()
    if (m := _BOXED_RE.match(s)) and s.endswith("}") and _match_brace(s, m.end()) == len(s) - 1:
        s = s[m.end() + 1 : -1]
    s = s.replace("\\$", "").replace("$", "")
    s = _unwrap_math(s)
    s = re.sub(r"\\[dt]frac(?![A-Za-z])", r"\\frac", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = s.replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"\\[,;: ]", " ", s)
    s = _unwrap_commands(s, _TEXT_WRAPPER_RE)
    s = re.sub(r"\s+", " ", s).strip()
    s = re.sub(r" (?=[^A-Za-z0-9])|(?<=[^A-Za-z0-9]) ", "", s)
    previous = None
    while previous != s:
        previous = s
        s = _TRAILING_UNIT_RE.sub("", s).rstrip().removesuffix(".").rstrip()
    s = _SHORT_FRAC_RE.sub(lambda m: f"\\frac{{{m[1] or m[2]}}}{{{m[3] or m[4]}}}", s)
    s = _SHORT_SQRT_RE.sub(r"\\sqrt{\1}", s)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    if _PLAIN_NUMBER_RE.fullmatch(s):
        s = _canonical_number(s)
    elif _PLAIN_WORDS_RE.fullmatch(s):
        s = s.lower()
    return s


def _to_fraction(s: str) -> Fraction | None:
    """Parse a normalised answer as a number (decimal, ``a/b`` or ``\\frac{a}{b}``)."""
    try:
        if _PLAIN_NUMBER_RE.fullmatch(s):
            return Fraction(s)
        m = _SLASH_FRACTION_RE.fullmatch(s) or _LATEX_FRACTION_RE.fullmatch(s)
        if m:
            value = Fraction(m[2]) / Fraction(m[3])
            return -value if m[1] else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


@lru_cache(maxsize=1)
def _math_verify() -> tuple[Callable[..., Any], Callable[..., Any], type[BaseException], str, str]:
    """Import math_verify lazily; return parse, verify, its timeout error and timeout kwargs."""
    # math-verify pulls in sympy (about a second): only answers that need it pay for it.
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    parse_params = inspect.signature(parse).parameters
    verify_params = inspect.signature(verify).parameters
    parse_kw = next((k for k in ("parsing_timeout", "timeout_seconds") if k in parse_params), "")
    verify_kw = next((k for k in ("timeout_seconds", "parsing_timeout") if k in verify_params), "")
    return parse, verify, TimeoutException, parse_kw, verify_kw


def _math_verify_equivalent(gold: str, pred: str) -> bool:
    """Compare two normalised answers with math_verify; any error or timeout counts as False."""
    if max(len(gold), len(pred)) > _MAX_VERIFY_CHARS:
        return False
    parse, verify, timeout_error, parse_kw, verify_kw = _math_verify()
    # signal.alarm-based timeouts only work in the main thread; None disables them elsewhere.
    limit = _MV_TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    parse_opts = {parse_kw: limit} if parse_kw else {}
    verify_opts = {verify_kw: limit} if verify_kw else {}
    try:
        gold_parsed = parse(f"${gold}$", **parse_opts)
        pred_parsed = parse(f"${pred}$", **parse_opts)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, **verify_opts))
    except Exception:
        return False
    except BaseException as exc:  # math_verify's TimeoutException derives from BaseException
        if isinstance(exc, timeout_error):
            return False
        raise


@lru_cache(maxsize=8192)
def _equivalent_normalized(gold: str, pred: str) -> bool:
    """Decide equivalence of two distinct, non-empty normalised answers (cached)."""
    x, y = _to_fraction(gold), _to_fraction(pred)
    if x is not None and y is not None:
        return x == y or abs(float(x - y)) <= _REL_TOL * max(abs(float(x)), abs(float(y)))
    return _math_verify_equivalent(gold, pred)


def answers_equivalent(a: str | None, b: str | None) -> bool:
    """Return whether two answers are mathematically the same.

    Checks, in order: None (never equivalent), empty answers (never equivalent), equal
    normalised strings, numbers (both parse as decimals or simple fractions: equal within a
    relative tolerance of 1e-6, and decisive), then ``math_verify`` with ``a`` as the gold.

    Args:
        a: the reference answer (math_verify's gold), or None.
        b: the candidate answer, or None.

    Returns:
        True when the answers are judged equivalent.
    """
    if a is None or b is None:
        return False
    na, nb = normalize_answer(a), normalize_answer(b)
    if not na or not nb:
        return False
    if na == nb:
        return True
    return _equivalent_normalized(na, nb)


def answer_key(ans: str | None) -> str | None:
    """A cheap vote key: the normalised answer, with numbers reduced to one exact form.

    ``1/2``, ``0.5`` and ``\\frac{1}{2}`` share a key; symbolic equivalence (math_verify) is not
    tried, so this is fast enough for aggregating thousands of samples. None for None or an
    answer that normalises to nothing.
    """
    if ans is None:
        return None
    norm = normalize_answer(ans)
    if not norm:
        return None
    value = _to_fraction(norm)
    return norm if value is None else str(value)


def group_answers(answers: Sequence[str | None]) -> list[list[int]]:
    """Group the indices of equivalent answers, in first-seen order.

    Answers with equal normalised forms are grouped by hashing; ``answers_equivalent`` is only
    called between the first answers of distinct normalised forms. A new form joins the first
    existing group whose representative is equivalent to it. None and empty answers are left out.

    Args:
        answers: the answers, e.g. one per sampled candidate.

    Returns:
        Lists of indices into ``answers``; each list is one group, sorted ascending.
    """
    groups: list[list[int]] = []
    representatives: list[str] = []
    group_of_norm: dict[str, int] = {}
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        norm = normalize_answer(ans)
        if not norm:
            continue
        gi = group_of_norm.get(norm)
        if gi is None:
            gi = next(
                (g for g, rep in enumerate(representatives) if _equivalent_normalized(rep, norm)),
                None,
            )
            if gi is None:
                gi = len(groups)
                groups.append([])
                representatives.append(norm)
            group_of_norm[norm] = gi
        groups[gi].append(i)
    return groups

"""Generated text -> label, or ``None`` for a failed prediction.

``paper`` reproduces the paper's evaluation so numbers compare with its tables: strip the text; if it
contains ``:`` keep only its first character (answers like ``"B: red"``); the prediction is valid iff
it equals one of the gold labels of the evaluated set. ``robust`` accepts an exact label or ``"<label>: ..."``,
then differences of case and punctuation, a leading label word (``"Yes, because ..."``,
``"(B) red"``, ``"Answer: B"``, where ``paper`` would read ``A``) and an option's text instead of its
letter.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Sequence

from caslie.tasks import option_label

PARSERS = ("paper", "robust")

_PUNCT = string.punctuation + " \t\n\r“”‘’"
_LEAD = re.compile(r"^\W*(?:the\s+)?(?:final\s+)?(?:answer|option|response)?\s*(?:is)?\s*[:\-]?\s*\W*"
                   r"([A-Za-z0-9]+)\b", re.IGNORECASE)  # fmt: skip


def parse_paper(text: str, valid: Collection[str]) -> str | None:
    """The paper's rule: strip, keep the first character when there is a ``:``, exact match."""
    pred = text.strip()
    if ":" in pred:
        pred = pred[0]
    return pred if pred in valid else None


def _norm(text: str) -> str:
    return " ".join(text.strip(_PUNCT).lower().split())


def parse_robust(
    text: str, valid: Collection[str], options: Sequence[str] | None = None
) -> str | None:
    """An exact label or ``<label>: ...``; then case/punctuation, a leading label word, or an option's text.

    Args:
        text: Generated text.
        valid: Labels that count as answers.
        options: The row's options (``"B: red"``), to map an answered option text to its label.
    """
    stripped = text.strip()
    if stripped in valid:
        return stripped
    head, sep, _ = stripped.partition(":")
    if sep and head.strip() in valid:  # "B: neutral"
        return head.strip()
    by_norm = {_norm(label): label for label in valid}
    cleaned = _norm(text)
    if cleaned in by_norm:
        return by_norm[cleaned]
    lead = _LEAD.match(text)
    if lead and _norm(lead.group(1)) in by_norm:
        return by_norm[_norm(lead.group(1))]
    for option in options or ():
        label = option_label(option)
        body = _norm(option.partition(":")[2])
        if label in valid and cleaned and cleaned in (body, _norm(option)):
            return label
    return None


def parse_answer(
    text: str, valid: Collection[str], parser: str = "paper", options: Sequence[str] | None = None
) -> str | None:
    """Parse ``text`` with the named parser (``paper`` or ``robust``).

    Raises:
        ValueError: an unknown parser name.
    """
    if parser == "paper":
        return parse_paper(text, valid)
    if parser == "robust":
        return parse_robust(text, valid, options)
    raise ValueError(f"unknown eval.parser '{parser}' (choose from {', '.join(PARSERS)})")

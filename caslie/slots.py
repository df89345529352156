"""Image slots of a record and their context: what EC3 and CQE prompts say about each product.

One slot per image, in ``images`` order. PRP has two products, each captioned with the other's title;
SR has every history item, then every option, each with its own item text.
"""

from __future__ import annotations

import string
from typing import Any

from caslie.data.records import Record


def item_text(entry: str) -> str:
    """``"1st: Title. Category. Brand."`` or ``"A: Title"`` -> the item text."""
    head, sep, rest = entry.partition(": ")
    return rest.strip() if sep and len(head) <= 5 else entry.strip()


def slot_contexts(record: Record) -> list[dict[str, str]]:
    """Template values for each image slot of ``record``.

    Keys: ``title``, ``other_title``, ``question``, ``document``, ``query``, ``review`` and
    ``options`` (as the task has them).
    """
    inp: Any = record.input
    options = ", ".join(record.options or [])
    task = record.task
    if task == "sr":
        items = [item_text(x) for x in inp] + [item_text(x) for x in record.options or []]
        return [{"title": t} for t in items]
    if task == "prp":
        p1, p2 = str(inp.get("product 1", "")), str(inp.get("product 2", ""))
        return [{"title": p1, "other_title": p2}, {"title": p2, "other_title": p1}]
    ctx = {
        "ap": lambda: {"question": inp.get("question", ""), "document": inp.get("document", "")},
        "cc": lambda: {"title": inp.get("title", ""), "options": options},
        "psi": lambda: {"query": inp.get("query", ""), "title": inp.get("product title", "")},
        "mpc": lambda: {"query": inp.get("query", ""), "title": inp.get("product title", "")},
        "sa": lambda: {"review": inp.get("review", "")},
    }[task]()
    return [{k: str(v) for k, v in ctx.items()}] * len(record.images)


def fill(template: str, values: dict[str, str]) -> str:
    """Format ``template`` with ``values``; a placeholder without a value names the field."""
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    missing = names - set(values)
    if missing:
        raise KeyError(f"template needs {sorted(missing)}, the row gives {sorted(values)}")
    return template.format(**values)

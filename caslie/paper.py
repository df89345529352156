"""The paper's published numbers (Tables 2, 3, 4 and A9), kept as data in ``caslie/published/``, and
the row of the paper a run corresponds to.

A run maps to the paper's row of its model family: Llama-2-13B is CASLIE-L, Mistral-7B CASLIE-M,
Llama-3.2-3B CASLIE-S (a ``tiny:mistral`` demo run is compared with the Mistral rows, so that the
comparison machinery can be tried offline; its numbers are not expected to come close).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any

from caslie.config import PAPER_VOTERS
from caslie.tasks import TASK_CODES, TASKS

PUBLISHED = Path(__file__).resolve().parent / "published"
FILES = {
    "table2": "table2_and_appendix_d.csv",
    "table3": "table3_generalist_vs_task_specific.csv",
    "table4": "table4_captioners.csv",
    "a9": "tableA9_cqe_strategies.csv",
}
"""Report layout -> the CSV of the paper's numbers for it."""

KEYS = {
    "table2": ("model", "fusion"),
    "table3": ("size", "training"),
    "table4": ("setting", "captioning_model"),
    "a9": ("strategy", "evaluation_model"),
}
"""The columns that name a row in each CSV (Table 2 adds ``split``)."""

OOD_TASKS = tuple(t for t in TASK_CODES if TASKS[t].has_ood)

CAPTION_USED_PCT = {
    "ind": {"ap": 62.1, "cc": 62.3, "prp": 50.5, "psi": 74.5, "mpc": 72.2, "sa": 56.8, "sr": 30.3},
    "ood": {"ap": 68.2, "cc": 62.6, "prp": 43.2, "sa": 56.4, "sr": 30.4},
}
"""Table 2's "caption used" row: the share of captions MV keeps, per split and task (%)."""

_METRIC_SUFFIX = {"f1": "f1", "r1": "r1", "macro_f1": "mf1", "acc": "acc"}
_BASELINES = {"L": "ft-Llama-2-13B", "M": "ft-Mistral-7B-v0.3", "S": "ft-Llama-3.2-3B"}
_VOTER_NAMES = {
    "llama-3.2-3b-instruct": "Llama-3.2-3B-Instruct",
    "llama-3.1-8b-instruct": "Llama-3.1-8B-Instruct",
    "llama-3.2-11b-vision-instruct": "Llama-3.2-Vision-Instruct",
    "mistral-7b-instruct-v0.3": "Mistral-7B-Instruct-v0.3",
    "phi-3.5-mini-instruct": "Phi-3.5-mini-Instruct",
}
_CAPTIONERS = (  # (a substring of the caption model id, the paper's setting and name)
    ("blip2", ("w/o context", "BLIP2-OPT-2.7B")),
    ("llava-1.5", ("w/ context & caption", "LLaVA-1.5-7B")),
    ("llava-v1.6-mistral", ("w/ context & caption", "LLaVA-NExT-mistral-7B")),
    ("llama-3.2-11b-vision", ("w/ context & caption", "Llama-3.2-Vision-Instruct")),
)


def column(task: str) -> str:
    """The paper CSVs' column for a task's primary metric (``ap_f1``, ``prp_mf1``...)."""
    return f"{task}_{_METRIC_SUFFIX[TASKS[task].primary]}"


@functools.cache
def published(table: str) -> tuple[dict[str, Any], ...]:
    """The paper's rows for a report layout, metric cells as floats (``None`` where empty); read
    once per process (treat the rows as read-only).

    Raises:
        KeyError: an unknown layout.
    """
    with (PUBLISHED / FILES[table]).open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    metric_columns = {column(t) for t in TASK_CODES}
    for row in rows:
        for key in metric_columns & set(row):
            row[key] = float(row[key]) if row[key] else None
    return tuple(rows)


def size_of(model: str) -> str | None:
    """The paper's size letter (L, M, S) of a model id's family, or ``None``."""
    name = model.lower().replace("_", "-")
    if "mistral" in name:
        return "M"
    if "llama-2" in name or "llama2" in name:
        return "L"
    if "llama-3.2-3b" in name or "llama32-3b" in name or name == "tiny:llama":
        return "S"
    return None


def paper_key(table: str, identity: dict[str, Any]) -> dict[str, str] | None:
    """The key columns of the paper's row that a run (its ``metrics.json`` identity) reproduces,
    or ``None`` when the paper has no such row."""
    fusion = str(identity.get("fusion") or "")
    size = size_of(str(identity.get("model") or ""))
    if identity.get("model_kind") == "fashionclip":
        return {"model": "ft-FashionCLIP", "fusion": ""} if table == "table2" else None
    if size is None:
        return None
    if table == "table2":
        if fusion == "none":
            return {"model": _BASELINES[size], "fusion": "none"}
        if fusion in ("mv", "uia"):
            return {"model": f"CASLIE-{size}", "fusion": fusion}
        return None
    if table == "table3":
        generalist = list(identity.get("tasks") or []) == list(TASK_CODES)
        return {"size": size, "training": "generalist" if generalist else "task-specific"}
    if size != "M":  # Tables 4 and A9 are CASLIE-M ablations
        return None
    if table == "table4":
        if fusion == "none":
            return {"setting": "w/o caption", "captioning_model": ""}
        captioner = str(identity.get("caption_model") or "meta-llama/Llama-3.2-11B-Vision-Instruct")
        for needle, (setting, name) in _CAPTIONERS:
            if needle in captioner.lower():
                return {"setting": setting, "captioning_model": name}
        return None
    if table == "a9":
        if fusion == "uia":
            return {"strategy": "uia", "evaluation_model": ""}
        if fusion.startswith("single:") and fusion[7:] in _VOTER_NAMES:
            return {"strategy": "single", "evaluation_model": _VOTER_NAMES[fusion[7:]]}
        if fusion == "mv" and sorted(identity.get("voters") or []) == sorted(PAPER_VOTERS):
            return {"strategy": "mv", "evaluation_model": "above 5 models"}
    return None


def paper_values(table: str, key: dict[str, str], split: str) -> dict[str, float | None]:
    """``{task: published primary metric}`` of the row ``key`` for ``split`` (``ind``/``ood``);
    empty when the paper has no such row or split."""
    for row in published(table):
        if all(row.get(k, "") == v for k, v in key.items()) and row.get("split", "ind") == split:
            return {t: row.get(column(t)) for t in TASK_CODES}
    return {}

"""Per-task metrics with torchmetrics, as the paper's Table 2 and Appendix D.

ap, psi: binary with ``yes`` positive (acc, precision, recall, f1; primary f1). mpc: acc primary with
macro precision/recall/F1. prp, sa: macro-F1 primary with acc and macro precision/recall. cc, sr: R@1,
the share of rows whose chosen option is the gold one. Failed predictions (``None``) are counted and
left out of the metric, as the paper does. Classes are indexed over the labels present in gold or
prediction, so macro averages run over exactly those labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_f1_score,
    binary_precision,
    binary_recall,
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

from caslie.tasks import BINARY, CHOICE, TASKS


def _indexed(
    golds: Sequence[str], preds: Sequence[str]
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    labels = sorted(set(golds) | set(preds))
    index = {label: i for i, label in enumerate(labels)}
    return (
        labels,
        torch.tensor([index[g] for g in golds], dtype=torch.long),
        torch.tensor([index[p] for p in preds], dtype=torch.long),
    )


def task_metrics(task: str, golds: Sequence[str], preds: Sequence[str | None]) -> dict[str, Any]:
    """Score one task's predictions.

    Args:
        task: Task code.
        golds: Gold labels, one per row.
        preds: Parsed predictions aligned with ``golds``; ``None`` marks a failed prediction.

    Returns:
        The task's metrics plus ``n`` (scored rows), ``failed`` and ``primary`` (the name of the
        paper's primary metric). Metrics are ``None`` when no row could be scored.
    """
    if len(golds) != len(preds):
        raise ValueError(f"{task}: {len(golds)} gold labels but {len(preds)} predictions")
    spec = TASKS[task]
    kept = [(g, p) for g, p in zip(golds, preds, strict=True) if p is not None]
    out: dict[str, Any] = {
        "n": len(kept),
        "failed": len(golds) - len(kept),
        "primary": spec.primary,
    }
    names = {
        BINARY: ("acc", "precision", "recall", "f1"),
        CHOICE: ("r1",),
    }.get(spec.metric_kind, ("acc", "macro_precision", "macro_recall", "macro_f1"))
    if not kept:
        return out | dict.fromkeys(names)
    g_list, p_list = zip(*kept, strict=True)
    if spec.metric_kind == BINARY:
        g = torch.tensor([x == spec.positive_label for x in g_list], dtype=torch.long)
        p = torch.tensor([x == spec.positive_label for x in p_list], dtype=torch.long)
        values = [
            fn(p, g) for fn in (binary_accuracy, binary_precision, binary_recall, binary_f1_score)
        ]
    else:
        labels, g, p = _indexed(g_list, p_list)
        # torchmetrics needs two classes; an extra empty class leaves every average unchanged
        # (macro averages skip classes absent from gold and prediction).
        k = max(2, len(labels))
        if spec.metric_kind == CHOICE:
            values = [multiclass_accuracy(p, g, num_classes=k, average="micro")]
        else:
            values = [multiclass_accuracy(p, g, num_classes=k, average="micro")] + [
                fn(p, g, num_classes=k, average="macro")
                for fn in (multiclass_precision, multiclass_recall, multiclass_f1_score)
            ]
    return out | {name: float(v) for name, v in zip(names, values, strict=True)}


def mean_primary(per_task: dict[str, dict[str, Any]]) -> float | None:
    """Mean of each task's primary metric; a task whose every prediction failed counts as 0."""
    values = [m.get(m["primary"]) or 0.0 for m in per_task.values() if isinstance(m, dict)]
    return sum(values) / len(values) if values else None

"""Per-task metrics, as the paper's Table 2 and Appendix D, in float64.

ap, psi: binary with ``yes`` positive (acc, precision, recall, f1; primary f1). mpc: acc primary with
macro precision/recall/F1. prp, sa: macro-F1 primary with acc and macro precision/recall. cc, sr: R@1,
the share of rows whose chosen option is the gold one. Failed predictions (``None``) are counted and
left out of the metric, as the paper does. Classes are indexed over the labels present in gold or
prediction, so macro averages run over exactly those labels (sklearn's default), and a ratio with a
zero denominator is 0 (sklearn's ``zero_division=0``).

torchmetrics counts true/false positives and negatives per class; the ratios are then taken in
Python floats (float64), because torchmetrics' own ratios are float32 and would differ from sklearn's
(the paper's scripts) in the seventh digit.

Written metrics (``metrics.json``, ``caslie evaluate``) keep :data:`DECIMALS` decimals
(:func:`rounded`): the paper reports three, so six are exact for any comparison with it, and a ratio
such as 2/3 does not print as ``0.6666666666666666``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.functional.classification import binary_stat_scores, multiclass_stat_scores

from caslie.tasks import BINARY, CHOICE, TASKS

DECIMALS = 6
"""Decimals every written metric keeps (see :func:`rounded`)."""


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
        tp, fp, _, fn, _ = (int(v) for v in binary_stat_scores(p, g))
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        values = [_accuracy(g_list, p_list), precision, recall, _ratio(2 * tp, 2 * tp + fp + fn)]
    elif spec.metric_kind == CHOICE:
        values = [_accuracy(g_list, p_list)]
    else:
        labels, g, p = _indexed(g_list, p_list)
        # torchmetrics needs two classes; an extra class absent from gold and prediction is dropped
        # below like every other absent class.
        stats = multiclass_stat_scores(p, g, num_classes=max(2, len(labels)), average=None)
        per_class = [tuple(int(v) for v in row[:4]) for row in stats[: len(labels)]]
        values = [
            _accuracy(g_list, p_list),
            _mean([_ratio(tp, tp + fp) for tp, fp, _, fn in per_class]),
            _mean([_ratio(tp, tp + fn) for tp, fp, _, fn in per_class]),
            _mean([_ratio(2 * tp, 2 * tp + fp + fn) for tp, fp, _, fn in per_class]),
        ]
    return out | dict(zip(names, values, strict=True))


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _accuracy(golds: Sequence[str], preds: Sequence[str]) -> float:
    return sum(g == p for g, p in zip(golds, preds, strict=True)) / len(golds)


def mean_primary(per_task: dict[str, dict[str, Any]]) -> float | None:
    """Mean of each task's primary metric; a task whose every prediction failed counts as 0."""
    values = [m.get(m["primary"]) or 0.0 for m in per_task.values() if isinstance(m, dict)]
    return sum(values) / len(values) if values else None


def rounded(value: Any, digits: int = DECIMALS) -> Any:
    """``value`` with every float inside it (in dicts, lists and tuples) a Python float rounded to
    ``digits`` decimals: the form results files store metrics in. Other values are kept as they are.

    Args:
        value: A metric, or a nest of them (``{split: {task: metrics}}``).
        digits: Decimals to keep.
    """
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    if isinstance(value, float):
        return round(float(value), digits)
    return value

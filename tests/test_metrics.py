"""The paper's metrics against sklearn, to 1e-12 (float64 throughout)."""

import random

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from caslie.metrics import DECIMALS, mean_primary, rounded, task_metrics

TOL = 1e-12


def _random_case(rng: random.Random, labels: list[str], pred_labels: list[str], n: int):
    golds = [rng.choice(labels) for _ in range(n)]
    preds = [rng.choice(pred_labels) if rng.random() > 0.15 else None for _ in range(n)]
    return golds, preds


@pytest.mark.parametrize("seed", range(12))
def test_binary_metrics_match_sklearn_with_yes_positive(seed):
    rng = random.Random(seed)
    golds, preds = _random_case(
        rng, ["yes", "no"], ["yes", "no"] if seed % 3 else ["no"], rng.randint(3, 60)
    )
    got = task_metrics("ap", golds, preds)
    kept = [(g, p) for g, p in zip(golds, preds, strict=True) if p is not None]
    g, p = [k[0] for k in kept], [k[1] for k in kept]
    assert got["n"] == len(kept) and got["failed"] == len(golds) - len(kept)
    assert got["acc"] == pytest.approx(accuracy_score(g, p), rel=0, abs=TOL)
    assert got["precision"] == pytest.approx(
        precision_score(g, p, pos_label="yes", zero_division=0), rel=0, abs=TOL
    )
    assert got["recall"] == pytest.approx(
        recall_score(g, p, pos_label="yes", zero_division=0), rel=0, abs=TOL
    )
    assert got["f1"] == pytest.approx(
        f1_score(g, p, pos_label="yes", zero_division=0), rel=0, abs=TOL
    )


@pytest.mark.parametrize("seed", range(12))
def test_macro_metrics_match_sklearn_over_labels_present(seed):
    rng = random.Random(100 + seed)
    # Gold uses A-D, predictions A-C plus E: classes absent from one side on purpose.
    golds, preds = _random_case(rng, ["A", "B", "C", "D"], ["A", "B", "C", "E"], rng.randint(5, 80))
    got = task_metrics("sa", golds, preds)
    kept = [(g, p) for g, p in zip(golds, preds, strict=True) if p is not None]
    g, p = [k[0] for k in kept], [k[1] for k in kept]
    assert got["acc"] == pytest.approx(accuracy_score(g, p), rel=0, abs=TOL)
    for name, fn in (
        ("macro_precision", precision_score),
        ("macro_recall", recall_score),
        ("macro_f1", f1_score),
    ):
        assert got[name] == pytest.approx(
            fn(g, p, average="macro", zero_division=0), rel=0, abs=TOL
        ), name
    assert got["primary"] == "macro_f1"


def test_r1_is_the_hit_rate_of_the_chosen_option():
    got = task_metrics("sr", ["A", "B", "C", "D"], ["A", "C", None, "D"])
    assert got == {"n": 3, "failed": 1, "primary": "r1", "r1": pytest.approx(2 / 3)}


def test_all_failed_gives_none_and_counts_zero_in_the_mean():
    got = task_metrics("psi", ["yes", "no"], [None, None])
    assert got["f1"] is None and got["failed"] == 2
    assert mean_primary({"psi": got, "cc": task_metrics("cc", ["A"], ["A"])}) == pytest.approx(0.5)


def test_rounded_keeps_the_written_decimals_of_every_float_and_nothing_else():
    noisy = float(np.float32(0.8))  # 0.800000011920929: a float32 ratio read as float64
    scored = task_metrics("sa", ["a", "a", "b"], ["a", "b", "b"])
    nest = {"test_ind": {"sa": scored | {"acc": noisy}, "primary_mean": 2 / 3},
            "checkpoint": None, "pct": [12.5, 1 / 3], "caption_used": [True, False]}  # fmt: skip
    out = rounded(nest)
    assert DECIMALS == 6
    sa = out["test_ind"]["sa"]
    assert sa["acc"] == 0.8 and out["test_ind"]["primary_mean"] == 0.666667
    assert sa["macro_f1"] == round(scored["macro_f1"], 6) != scored["macro_f1"]  # 2/3 in float64
    assert sa["n"] == 3 and type(sa["n"]) is int and sa["primary"] == "macro_f1"
    assert out["checkpoint"] is None and out["pct"] == [12.5, 0.333333]
    assert out["caption_used"] == [True, False]  # booleans are not floats here
    assert rounded(2 / 3, 2) == 0.67

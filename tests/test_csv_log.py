"""csv/metrics.csv: float32 values without float64 noise; a resumed run appends under the header."""

from __future__ import annotations

import csv
from decimal import Decimal

import numpy as np
import torch

from caslie.csv_log import RunCSVLogger, shortest_float32


def _rows(path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_float32_values_are_written_as_their_shortest_decimal(tmp_path):
    logged = {
        "val/sa/macro_f1": torch.tensor(1 / 3),  # float32, as every self.log value
        "train/lr": torch.tensor(4.774575063493103e-05),
        "train/peak_mem_mib": torch.tensor(848.5546875),
        "train/loss_bf16": torch.tensor(2.634, dtype=torch.bfloat16),
        "exact": torch.tensor(1 / 3, dtype=torch.float64),  # float64 keeps its digits
        "count": 3,
    }
    logger = RunCSVLogger(str(tmp_path), name="csv", version="")
    logger.log_metrics(logged, step=0)
    logger.save()
    text = (tmp_path / "csv" / "metrics.csv").read_text()
    assert "0.3333333432674408" not in text and "0.33333334" in text
    row = _rows(tmp_path / "csv" / "metrics.csv")[0]
    for key, value in logged.items():
        if isinstance(value, torch.Tensor) and value.dtype != torch.float64:
            # Reads back as the very float32 that was logged, in at most 9 significant digits.
            assert np.float32(float(row[key])) == np.float32(value.item()), key
            assert len(Decimal(row[key]).as_tuple().digits) <= 9, row[key]
    assert row["exact"] == "0.3333333333333333" and row["count"] == "3"
    assert row["train/lr"] == "4.774575e-05"


def test_shortest_float32_leaves_other_values_alone():
    assert shortest_float32(0.1) == 0.1 and shortest_float32(7) == 7
    vector = torch.tensor([0.1, 0.2])
    assert shortest_float32(vector) is vector
    assert shortest_float32(torch.tensor(float("inf"))) == float("inf")


def test_a_second_logger_appends_under_the_first_ones_header(tmp_path):
    for step in (0, 1):
        logger = RunCSVLogger(str(tmp_path), name="csv", version="")
        logger.log_metrics({"train/loss": torch.tensor(0.5 + step)}, step=step)
        logger.save()
    rows = _rows(tmp_path / "csv" / "metrics.csv")
    assert [(r["step"], r["train/loss"]) for r in rows] == [("0", "0.5"), ("1", "1.5")]

"""``csv/metrics.csv``: every logged value of a run, kept across resumes.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a resumed run would
lose the history before the interruption. This logger appends to it instead (under its header).

Values logged as float32 tensors (every ``self.log`` value) are written as the shortest decimal that
reads back as the same float32 (``0.33333334``), not as the float64 expansion ``.item()`` gives
(``0.3333333432674408``): the extra digits were never in the value.
"""

from __future__ import annotations

import csv
from typing import Any

import numpy as np
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from torch import Tensor


def shortest_float32(value: Any) -> Any:
    """A one-element float tensor of at most 32 bits as the shortest Python float that is the same
    float32 (float16 and bfloat16 values are float32 values too); anything else as it is."""
    narrow = isinstance(value, Tensor) and value.is_floating_point() and value.element_size() <= 4
    if narrow and value.numel() == 1:
        return float(str(np.float32(value.item())))  # numpy prints the shortest round trip
    return value


class _AppendingWriter(ExperimentWriter):
    """Continues an existing ``metrics.csv`` (its header becomes the known columns), writing float32
    values without float64 noise (:func:`shortest_float32`)."""

    def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics({k: shortest_float32(v) for k, v in metrics_dict.items()}, step)

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = next(csv.reader(fh), [])


class RunCSVLogger(CSVLogger):
    """A ``CSVLogger`` whose ``metrics.csv`` survives a resume (see :class:`_AppendingWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

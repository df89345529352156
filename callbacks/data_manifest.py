"""Write the data build's manifest into the run folder as soon as the data is ready."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from caslie.metrics import rounded
from caslie.run_dir import write_json_rank_zero


class DataManifest(L.Callback):
    """Writes ``<run_dir>/data_manifest.json`` (rows per task and split, skips, trimmed examples,
    caption used %) after the datamodule's ``setup``, on rank zero, atomically, so a run that dies
    in training still says what data it saw.

    Args:
        run_dir: The run folder.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "data_manifest.json"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" or not self.path.exists():
            # Its timings round like every number a results file keeps.
            write_json_rank_zero(self.path, rounded(trainer.datamodule.manifest))

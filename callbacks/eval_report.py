"""After testing: write predictions and metrics into the run folder, and log them to W&B."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from caslie.evaluation import PRIMARY_MEAN, format_table, write_predictions
from caslie.images import ImageError, ImageLimits, load_image
from caslie.metrics import rounded
from caslie.run_dir import write_atomic

log = logging.getLogger(__name__)


class EvalReport(L.Callback):
    """Writes ``predictions/<split>.jsonl`` and ``metrics.json`` (metrics rounded to
    :data:`caslie.metrics.DECIMALS` decimals) and logs W&B tables (rank zero).

    The caption used % comes from the datamodule's manifest. Table images are read through
    :func:`caslie.images.load_image`, the loader the data uses: a path outside ``image_root``, a
    refused URL, a decompression bomb or a corrupt file is a missing image in the table (one
    warning counts them), never a copied file or a crash at the end of a finished run.

    Args:
        run_dir: The run folder.
        image_root: Folder relative image paths resolve against (for W&B images).
        n_table_rows: Rows per split in the W&B predictions table (0: no table).
        identity: What the run is (model, fusion, voters...), written into ``metrics.json``.
        image_limits: How table images are fetched and sized (``data.allow_private_urls``...).
    """

    def __init__(self, run_dir: Path, image_root: Path, n_table_rows: int = 64,
                 identity: dict[str, Any] | None = None,
                 image_limits: ImageLimits | None = None):  # fmt: skip
        self.run_dir, self.image_root, self.n_table_rows = run_dir, image_root, n_table_rows
        self.identity, self.image_limits = identity or {}, image_limits or ImageLimits()
        self.images_refused: list[str] = []  # why each table image was left out
        self.data_manifest: dict[str, Any] = {}
        self.table = ""

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = getattr(pl_module, "eval_results", None)
        if not trainer.is_global_zero or not results:
            return
        self.data_manifest = trainer.datamodule.manifest
        metrics, rows = results["metrics"], results["rows"]
        write_predictions(rows, self.run_dir / "predictions")
        payload = {
            "identity": self.identity,
            "metrics": metrics,
            "caption_used_pct": self.data_manifest.get("caption_used_pct", {}),
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "global_step": trainer.global_step,
        }
        # FashionCLIP adds its counts of truncated texts and missing images.
        payload |= {k: v for k, v in results.items() if k not in ("metrics", "rows")}
        write_atomic(self.run_dir / "metrics.json", json.dumps(rounded(payload), indent=2))
        self.table = format_table(metrics)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, metrics, rows)

    def _image(self, ref: str) -> Any:
        import wandb

        try:
            image = load_image(ref, self.image_root, self.image_limits)
        except ImageError as err:
            self.images_refused.append(str(err))
            return None
        return wandb.Image(image)  # the decoded pixels, never the file at the path

    def _log_wandb(self, logger: WandbLogger, metrics: dict, rows: list[dict]) -> None:
        import wandb

        run = logger.experiment
        for split, per_task in self.data_manifest.get("caption_used_pct", {}).items():
            for task, pct in per_task.items():
                run.summary[f"data/caption_used_pct/{split}/{task}"] = pct
        if self.n_table_rows:
            columns = ["split", "id", "task", "image", "captions", "caption_used", "votes",
                       "prompt", "generated", "parsed", "gold", "correct"]  # fmt: skip
            table = wandb.Table(columns=columns)
            self.images_refused = []
            for split in metrics:
                for row in [r for r in rows if r["split"] == split][: self.n_table_rows]:
                    table.add_data(
                        row["split"], row["id"], row["task"],
                        self._image(row["images"][0]) if row["images"] else None,
                        json.dumps(row["captions"]), json.dumps(row["caption_used"]),
                        json.dumps(row["votes"]), row["prompt"], row["generated"],
                        row["parsed"], row["gold"], row["correct"],
                    )  # fmt: skip
            if self.images_refused:
                log.warning("W&B predictions table: %d image(s) left out, first: %s",
                            len(self.images_refused), self.images_refused[0])  # fmt: skip
            run.log({"predictions": table})  # its images travel in the run_table artifact
        plots = {}
        for split, per_task in metrics.items():
            for task in per_task:
                if task == PRIMARY_MEAN:
                    continue
                group = [r for r in rows if r["split"] == split and r["task"] == task]
                scored = [r for r in group if r["parsed"] is not None]
                labels = sorted({r["gold"] for r in scored} | {r["parsed"] for r in scored})
                if labels:
                    plots[f"confusion/{split}/{task}"] = wandb.plot.confusion_matrix(
                        y_true=[labels.index(r["gold"]) for r in scored],
                        preds=[labels.index(r["parsed"]) for r in scored],
                        class_names=labels,
                        title=f"{task} {split}",
                    )
        if plots:
            run.log(plots)

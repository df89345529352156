"""FashionCLIPModule: the paper's CLIP baseline, fine-tuned on one task or all seven.

Classification tasks (ap, psi, mpc, prp, sa) concatenate the normalised image embedding(s) and text
embedding(s) of a row and apply the task's linear head over its labels. Choice tasks score options by
cosine similarity times CLIP's learnt logit scale: cc compares the product (mean of its title and image
embeddings) with each category name; sr compares the user's history (mean of its items, each the
mean of its text and image) with each option item. A missing image is left out of every mean and is a
zero vector in a head's input. Training minimises cross-entropy; predictions become labels and are
scored with the same metrics as the LoRA models.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from caslie.config import Config
from caslie.models.base import CaslieModule
from caslie.pretrained import Checkpoint, load_model
from caslie.tasks import CHOICE, TASKS

log = logging.getLogger(__name__)


def _features(out: Any) -> torch.Tensor:
    """Projected embeddings from ``get_*_features`` (a tensor, or an output with ``pooler_output``)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _mean(vectors: list[torch.Tensor]) -> torch.Tensor:
    return F.normalize(torch.stack(vectors).mean(0), dim=-1)


class FashionCLIPModule(CaslieModule):
    """CLIP towers, one head per classification task, and option scoring for cc and sr.

    The CLIP model loads in ``configure_model`` (weights always in fp32: the whole model trains),
    and the heads are sized there to the label index the datamodule found (:meth:`bind`).

    Args:
        cfg: The run config (``model.name_or_path``: a CLIP checkpoint or ``tiny:clip``).
    """

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.label_index: dict[str, dict[str, int]] = {}
        self.clip: Any = None
        self.heads: torch.nn.ModuleDict | None = None
        self._counts = {"truncated_texts": 0, "missing_images": 0}

    def bind(self, datamodule: Any) -> None:
        """Take ``{task: {label: index}}`` of the classification tasks from the datamodule."""
        self.bind_labels(datamodule.label_index)

    def bind_labels(self, label_index: dict[str, dict[str, int]]) -> None:
        """Set the label index the heads are sized to (before ``configure_model``)."""
        self.label_index = label_index
        self._bound = True

    def checkpoint_meta(self) -> dict[str, Any]:
        """The label index, so an export names each head's outputs without the data."""
        return {"label_index": self.label_index}

    def configure_model(self) -> None:
        """Load CLIP and build one linear head per classification task (once)."""
        if self.clip is not None:
            return
        from transformers import CLIPModel

        self.clip = load_model(
            Checkpoint.from_config(self.cfg.model, what="CLIP model"), CLIPModel, torch.float32
        )
        self.clip.train()  # from_pretrained returns eval mode; the fit loop expects train mode
        dim = self.clip.config.projection_dim
        self.heads = torch.nn.ModuleDict({
            task: torch.nn.Linear(dim * TASKS[task].image_count({}, None) * 2, len(labels))
            for task, labels in self.label_index.items()
        })  # fmt: skip

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised text and image embeddings of the batch (missing images: zeros)."""
        text = F.normalize(_features(self.clip.get_text_features(input_ids=batch["input_ids"],
                                                                 attention_mask=batch["attention_mask"])), dim=-1)  # fmt: skip
        dim = text.shape[-1]
        image = torch.zeros((len(batch["image_mask"]), dim), device=text.device, dtype=text.dtype)
        mask = batch["image_mask"]
        if mask.any():
            feats = _features(
                self.clip.get_image_features(pixel_values=batch["pixel_values"][mask])
            )
            image[mask] = F.normalize(feats, dim=-1).to(text.dtype)
        return text, image

    def row_logits(self, row: dict[str, Any], text: torch.Tensor, image: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """Logits over a row's labels (classification) or options (cc, sr)."""
        if TASKS[row["task"]].metric_kind != CHOICE:
            parts = [image[i] for i in row["images"]] + [text[j] for j in row["texts"]]
            return self.heads[row["task"]](torch.cat(parts))
        scale = self.clip.logit_scale.exp()

        def item(t: int, i: int | None) -> torch.Tensor:
            return _mean([text[t]] + ([image[i]] if i is not None and mask[i] else []))

        if row["task"] == "cc":
            query = item(row["texts"][0], row["images"][0] if row["images"] else None)
            options = torch.stack([text[j] for j in row["option_texts"]])
        else:  # sr: the history pooled over its items
            images = row["images"] + [None] * (len(row["texts"]) - len(row["images"]))
            query = _mean([item(t, i) for t, i in zip(row["texts"], images, strict=True)])
            opt_images = row["option_images"] + [None] * (
                len(row["option_texts"]) - len(row["option_images"])
            )
            options = torch.stack(
                [item(t, i) for t, i in zip(row["option_texts"], opt_images, strict=True)]
            )
        return scale * options @ query

    def forward(self, batch: dict[str, Any]) -> list[torch.Tensor]:
        text, image = self.embed(batch)
        return [self.row_logits(row, text, image, batch["image_mask"]) for row in batch["rows"]]

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        logits = self(batch)
        losses = [F.cross_entropy(lg[None], torch.tensor([row["target"]], device=lg.device))
                  for lg, row in zip(logits, batch["rows"], strict=True)]  # fmt: skip
        return torch.stack(losses).mean(), logits

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, _ = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["rows"]))
        self.log(
            "train/truncated_texts", float(batch["truncated_texts"]), reduce_fx="sum", batch_size=1
        )
        self.log(
            "train/missing_images", float(batch["missing_images"]), reduce_fx="sum", batch_size=1
        )
        return loss

    def _collect(self, batch: dict[str, Any], logits: list[torch.Tensor]) -> None:
        self._counts["truncated_texts"] += batch["truncated_texts"]
        self._counts["missing_images"] += batch["missing_images"]
        self.add_rows([row["meta"] | {"generated": row["labels"][int(lg.argmax())]}
                       for row, lg in zip(batch["rows"], logits, strict=True)])  # fmt: skip

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        loss, logits = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["rows"]))
        self._collect(batch, logits)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch, self(batch))

    def on_test_epoch_start(self) -> None:
        super().on_test_epoch_start()
        self._counts = {"truncated_texts": 0, "missing_images": 0}

    def eval_extras(self) -> dict[str, Any]:
        """Truncated texts and missing images over the test splits."""
        return {"counts": dict(self._counts)}

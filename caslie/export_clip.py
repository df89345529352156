"""FashionCLIP export: the fine-tuned CLIP model and processor, with the task heads beside them.

The export folder holds what ``CLIPModel.from_pretrained`` and ``AutoProcessor.from_pretrained``
load, plus :data:`HEADS_WEIGHTS` (one linear layer per classification task: ``<task>.weight``,
``<task>.bias``) and :data:`HEADS_SPEC`, which says what each head reads and what its outputs
mean. :func:`load_heads` rebuilds the heads. cc and sr have no head: they score their options by
CLIP similarity (:class:`~caslie.models.fashionclip.FashionCLIPModule`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from caslie.config import Config
from caslie.errors import CheckpointError, MissingPathError
from caslie.models.fashionclip import FashionCLIPModule
from caslie.pretrained import Checkpoint, load_processor

log = logging.getLogger(__name__)

HEADS_WEIGHTS = "heads.safetensors"
HEADS_SPEC = "heads.json"

HEAD_INPUT = (
    "concatenation of the L2-normalised CLIP image embeddings of the row's images (zeros for a "
    "missing image), then its L2-normalised text embeddings"
)


def _label_index(ckpt: dict[str, Any]) -> tuple[dict[str, dict[str, int]], bool]:
    """The checkpoint's ``{task: {label: index}}`` and whether the labels are known. Checkpoints
    saved before the index was kept give the head sizes only (labels ``label_<i>``)."""
    index = ckpt.get("caslie", {}).get("label_index")
    if index is not None:
        return index, True
    sizes = {k.split(".")[1]: v.shape[0] for k, v in ckpt["state_dict"].items()
             if k.startswith("heads.") and k.endswith(".weight")}  # fmt: skip
    log.warning("the checkpoint predates saved label names: %s lists head sizes only", HEADS_SPEC)
    return {t: {f"label_{i}": i for i in range(n)} for t, n in sizes.items()}, False


def load_clip_run(cfg: Config, ckpt: dict[str, Any]) -> tuple[FashionCLIPModule, bool]:
    """The run's module with the checkpoint's weights, in eval mode, and whether its head labels
    are known.

    Raises:
        CheckpointError: the checkpoint's weights do not fit the configured CLIP model.
    """
    index, known = _label_index(ckpt)
    module = FashionCLIPModule(cfg)
    module.bind_labels(index)
    module.configure_model()
    try:
        module.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(
            f"the checkpoint does not fit {cfg.model.name_or_path}: {first}"
        ) from None
    return module.eval(), known


def export_clip(cfg: Config, ckpt: dict[str, Any], out: Path) -> None:
    """Write the checkpoint's CLIP model, the base model's processor and the heads to ``out``."""
    module, known = load_clip_run(cfg, ckpt)
    module.clip.save_pretrained(out, safe_serialization=True)
    load_processor(Checkpoint.from_config(cfg.model, what="CLIP model")).save_pretrained(out)
    save_file(
        {k: v.contiguous() for k, v in module.heads.state_dict().items()}, out / HEADS_WEIGHTS
    )
    dim = module.clip.config.projection_dim
    heads = {}
    for task, head in module.heads.items():
        per_input = head.in_features // dim  # each of the task's images and texts, alike
        labels = sorted(module.label_index[task], key=module.label_index[task].get)
        heads[task] = {"in_features": head.in_features, "out_features": head.out_features,
                       "images": per_input // 2, "texts": per_input // 2,
                       "labels": labels if known else None}  # fmt: skip
    spec = {"base_model": cfg.model.name_or_path, "input": HEAD_INPUT, "heads": heads}
    (out / HEADS_SPEC).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def load_heads(folder: str | Path) -> tuple[torch.nn.ModuleDict, dict[str, Any]]:
    """The task heads of an export folder and its :data:`HEADS_SPEC`.

    Raises:
        MissingPathError: the folder holds no FashionCLIP export.
    """
    folder = Path(folder)
    spec_path = folder / HEADS_SPEC
    if not spec_path.is_file():
        raise MissingPathError(f"{spec_path} does not exist: {folder} is no FashionCLIP export")
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    heads = torch.nn.ModuleDict({
        task: torch.nn.Linear(h["in_features"], h["out_features"])
        for task, h in spec["heads"].items()
    })  # fmt: skip
    heads.load_state_dict(load_file(folder / HEADS_WEIGHTS))
    return heads.eval(), spec

"""``run(cfg)``: the whole job behind ``python train.py``, callable from tests and the CLI."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caslie.config import Config, save_config

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run produced."""

    run_dir: Path
    data_manifest: dict[str, Any]


def run(cfg: Config) -> RunResult:
    """Prepare a run: save the resolved config into ``<run.output_dir>/<run.name>`` and build the
    tokenised, fused datasets for the model's tokenizer (cached for later runs).

    Returns:
        The run folder and the data manifest (rows per task and split, skips, trimmed examples,
        caption used %).
    """
    from caslie.data.pipeline import build_dataset
    from caslie.offline import tokenizer_for

    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    save_config(cfg, run_dir)
    tokenizer = tokenizer_for(cfg.model)
    built = build_dataset(cfg.data, tokenizer)
    (run_dir / "data_manifest.json").write_text(json.dumps(built.manifest, indent=2))
    log.info("data ready (%s): %s", "cache hit" if built.from_cache else "built", built.path)
    return RunResult(run_dir, built.manifest)

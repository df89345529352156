"""The run folder ``<run.output_dir>/<run.name>``: its name, and the files a run keeps beside its
checkpoints (config, data manifest, W&B run id), written by rank zero only and atomically.

Every rank of a job runs the same code before the Trainer exists, so a file written there must be
written once (rank zero) and never be seen half-written by a reader (a unique temporary file in
the same folder, then an atomic rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import string
import tempfile
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities import rank_zero_only

from caslie.cluster import restarted_by_slurm
from caslie.config import RESTART_KEYS, Config, changed_keys, to_dict, to_yaml
from caslie.errors import ConfigError

log = logging.getLogger(__name__)

AUTO_NAME = "auto"
"""``run.name`` value that names the run after its config file and overrides."""

WANDB_ID_FILE = "wandb_run_id"
STATUS_FILE = "status.json"
MAX_NAME = 96

RUN_OUTPUTS = ("checkpoints", "predictions", "csv", "metrics.json", "data_manifest.json",
               STATUS_FILE, WANDB_ID_FILE)  # fmt: skip
"""What a training run writes besides ``config.yaml`` and ``wandb/``: removed by ``run.overwrite``."""


class RunFinished(Exception):
    """The run folder holds a finished run, so a start without ``run.overwrite`` does nothing."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        super().__init__(
            f"run {run_dir} has already finished (see {run_dir / 'metrics.json'}); nothing to do. "
            f"run.overwrite=true starts it over, or choose another run.name"
        )


def is_rank_zero() -> bool:
    """Whether this process is the job's global rank zero.

    Lightning reads the launcher's ``RANK``, ``LOCAL_RANK`` or ``SLURM_PROCID``; a job started by
    hand on several nodes sets only ``LOCAL_RANK`` and ``NODE_RANK``, so the node counts too.
    """
    by_hand = "RANK" not in os.environ and "SLURM_PROCID" not in os.environ
    node = os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0"))
    return rank_zero_only.rank == 0 and not (by_hand and node != "0")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a unique temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_rank_zero(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, on rank zero only, atomically."""
    if is_rank_zero():
        write_atomic(path, json.dumps(payload, indent=2) + "\n")


def check_config(cfg: Config, run_dir: str | Path) -> None:
    """Check ``cfg`` against the run folder's ``config.yaml`` (on every rank; nothing is written).

    A run folder that already holds a different config and a checkpoint is refused: resuming with
    other settings silently mixes two experiments. Without any checkpoint nothing was trained yet
    (an attempt that failed early), so the new config may replace it.

    Raises:
        ConfigError: naming the changed keys.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.exists():
        return
    diff = changed_keys(_saved_config(path), to_yaml(cfg))
    if diff and not has_checkpoints(run_dir):
        log.warning("run folder %s holds no checkpoint yet: its config is replaced (changed: %s)",
                    run_dir, ", ".join(diff[:8]))  # fmt: skip
    elif diff:
        raise ConfigError(
            f"run folder {run_dir} already holds a different config ({path} differs in: "
            f"{', '.join(diff[:8])}); choose another run.name, or run.overwrite=true to start over"
        )


def _saved_config(path: Path) -> str:
    """The text of a run's saved ``config.yaml``.

    Raises:
        ConfigError: the file is damaged (not UTF-8, not YAML, or not a mapping), naming it.
    """
    try:
        text = path.read_text(encoding="utf-8")
        parsed = yaml.safe_load(text)
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        problem = str(err).splitlines()[0]
    else:
        if isinstance(parsed, dict) and parsed:
            return text
        problem = "empty" if not text.strip() else "not a mapping of settings"
    raise ConfigError(
        f"{path} is damaged ({problem}): restore it, or delete it to resume with the config "
        f"given now (the checkpoints are kept)"
    )


def save_config(cfg: Config, run_dir: str | Path, allow_change: bool = False) -> Path:
    """:func:`check_config` (unless ``allow_change``), then write ``config.yaml`` (rank zero).

    Raises:
        ConfigError: naming the changed keys.
    """
    run_dir = Path(run_dir)
    if not allow_change:
        check_config(cfg, run_dir)
    path = run_dir / "config.yaml"
    if is_rank_zero():
        write_atomic(path, to_yaml(cfg))
    return path


def has_checkpoints(run_dir: Path) -> bool:
    """Whether the run folder holds a checkpoint (``checkpoints/*.ckpt`` or a SLURM ``hpc_ckpt``)."""
    return any(run_dir.glob("checkpoints/*.ckpt")) or any(run_dir.glob("hpc_ckpt_*.ckpt"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "x"


def auto_run_name(config_path: str | Path | Sequence[str | Path] | None,
                  overrides: Sequence[str]) -> str:  # fmt: skip
    """A readable, unique name from the config files' stems and the overrides.

    ``configs/mistral_mv.yaml`` with ``optim.lr=2e-4 model.lora_r=8`` gives
    ``mistral_mv-lr2e-4-lora_r8``: each override as its last key part and value; a second config
    file adds its stem (``mistral_mv+fsdp``). A name longer than :data:`MAX_NAME` is cut and ends
    with a hash of all the overrides, so it stays unique.
    """
    paths = [config_path] if isinstance(config_path, (str, Path)) else list(config_path or [])
    stem = "+".join(Path(p).stem for p in paths) or "caslie"
    parts = [stem]
    for item in overrides:
        key, _, value = item.removeprefix("--").partition("=")
        if key == "run.name" or key in RESTART_KEYS:  # a restart stays the same run
            continue
        parts.append(_slug(key.rsplit(".", 1)[-1] + value))
    name = "-".join(parts)
    if len(name) > MAX_NAME:
        digest = hashlib.blake2b("\0".join(overrides).encode(), digest_size=4).hexdigest()
        name = f"{name[: MAX_NAME - 9].rstrip('-.')}-{digest}"
    return name


def sweep_run_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The run id a W&B sweep agent gave this process, or ``None`` outside a sweep.

    The agent starts each trial with ``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID`` set, and wandb uses
    that id whatever id the code passes.
    """
    if environ.get("WANDB_SWEEP_ID") and environ.get("WANDB_RUN_ID"):
        return environ["WANDB_RUN_ID"]
    return None


def resolve_run_name(cfg: Config, environ: Mapping[str, str] = os.environ) -> str:
    """Fix ``cfg.run.name`` for this process and return it.

    ``auto`` left unresolved by the command line becomes ``auto-<hash of the config>``. Inside a
    W&B sweep, each trial gets its own folder: ``<run.name>-<agent run id>``.
    """
    name = cfg.run.name
    if name == AUTO_NAME:  # the config minus what a restart may change, so a resume finds its run
        ident = to_dict(cfg)
        for key in (*RESTART_KEYS, "run.name"):
            section, _, leaf = key.partition(".")
            ident[section].pop(leaf, None)
        blob = json.dumps(ident, sort_keys=True, default=str).encode()
        name = f"auto-{hashlib.blake2b(blob, digest_size=4).hexdigest()}"
    agent_id = sweep_run_id(environ)
    if agent_id and not name.endswith(f"-{agent_id}"):
        name = f"{name}-{_slug(agent_id)}"
    cfg.run.name = name
    return name


_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a W&B run id may hold."""


def wandb_run_id(run_dir: Path, resuming: bool, environ: Mapping[str, str] = os.environ) -> str:
    """The W&B run id of this run: the agent's inside a sweep, the saved one when resuming, else a
    new one; rank zero saves it in the run folder."""
    path = run_dir / WANDB_ID_FILE
    run_id = sweep_run_id(environ)
    if run_id is None and resuming and path.is_file():
        run_id = path.read_bytes().decode("utf-8", "replace").strip()
        if not _RUN_ID.fullmatch(run_id):
            log.warning(
                "%s is damaged (%r): this run continues in a new W&B run", path, run_id[:40]
            )
            run_id = None
    if run_id is None:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if is_rank_zero():
        write_atomic(path, run_id)
    return run_id


def mark_finished(run_dir: Path) -> None:
    """Record that the run trained and tested to the end (rank zero)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json_rank_zero(run_dir / STATUS_FILE, {"state": "finished", "finished_at": stamp})


def is_finished(run_dir: Path) -> bool:
    """Whether :func:`mark_finished` recorded the run as finished."""
    try:
        status = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(status, dict) and status.get("state") == "finished"


def start_over(run_dir: Path) -> None:
    """Delete what an earlier start of the run wrote (:data:`RUN_OUTPUTS`, SLURM ``hpc_ckpt`` files),
    on rank zero. ``config.yaml`` is rewritten by the new start; ``wandb/`` keeps the old W&B runs."""
    if not is_rank_zero():
        return
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    for path in run_dir.glob("hpc_ckpt_*.ckpt"):
        path.unlink()


def start_plan(cfg: Config, run_dir: Path, environ: Mapping[str, str] = os.environ) -> str | None:
    """Decide what this start of a training run does, and return the ``trainer.ckpt_path`` to use.

    * ``run.overwrite``: start over (:func:`start_over`), except in a requeued SLURM job, which
      resumes: the requeued command line still says ``run.overwrite=true``.
    * A finished run is left alone (:class:`RunFinished`).
    * An unfinished run with checkpoints continues only when asked (``--resume``,
      ``trainer.ckpt_path``); a plain rerun would train from step 0 over its checkpoints.

    Raises:
        RunFinished: the run has finished.
        ConfigError: the run has checkpoints and neither ``--resume`` nor ``run.overwrite`` is set.
    """
    if cfg.run.overwrite and not restarted_by_slurm(environ):
        start_over(run_dir)
        return None  # never the old checkpoints, even on a rank that looks before rank zero deletes
    ckpt_path = "last" if cfg.run.overwrite else cfg.trainer.ckpt_path
    check_config(cfg, run_dir)
    if is_finished(run_dir):
        raise RunFinished(run_dir)
    if ckpt_path is None and has_checkpoints(run_dir):
        raise ConfigError(
            f"run folder {run_dir} holds checkpoints of an unfinished run: pass --resume to "
            f"continue it, run.overwrite=true to start it over, or choose another run.name"
        )
    return ckpt_path


def run_identity(cfg: Config) -> dict[str, Any]:
    """What a run is, as the paper's tables tell runs apart: model, fusion, voters, captions,
    tasks, seed (and the few settings ablations vary). Written into ``metrics.json``."""
    data = cfg.data
    return {
        "run": cfg.run.name,
        "model_kind": cfg.model.kind,
        "model": cfg.model.name_or_path,
        "fusion": data.fusion,
        "voters": data.fusion_voters,
        "mv_rule": data.mv_rule if data.fusion == "mv" else None,
        "captions": data.captions,
        "caption_model": data.caption_model,
        "tasks": list(data.tasks),
        "seed": cfg.run.seed,
        "lr": cfg.optim.lr,
        "lora_r": cfg.model.lora_r if cfg.model.kind == "lora" else None,
        "prompt_template": data.prompt_template,
    }

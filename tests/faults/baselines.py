"""Clean baselines the fault tests compare against, built once per module and copied per test.

(Not a ``conftest.py``: a second one would take the ``conftest`` module name the top-level tests
import from.)

Tiny models are deterministic, so an interrupted-then-finished job must end exactly where an
uninterrupted one ends.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import CrashAt

from caslie.captioning import run_caption
from caslie.config import load_config
from caslie.cqe import run_vote
from caslie.data.cache import read_shards
from train import run

REPO = Path(__file__).resolve().parents[2]

TRAIN = ["run.name=f", "data.tasks=sa", "data.eval_splits=[val]", "optim.effective_batch_size=4",
         "optim.micro_batch_size=4", "trainer.max_epochs=2", "trainer.checkpoint_every_n_steps=2",
         "logger.wandb.mode=offline"]  # fmt: skip
"""A short run: 24 sa rows in batches of 4, 6 steps an epoch, 12 in all, last.ckpt every 2 steps."""
CRASH_AT = 8
"""The crashed baseline dies before step 9: last.ckpt holds step 8, best.ckpt step 6 (epoch 1)."""


def caption_args(tmp: Path) -> list[str]:
    """``caslie caption`` on the demo config into ``tmp/captions``."""
    return ["--config", str(REPO / "configs/caption/demo.yaml"), f"data.captions={tmp / 'captions'}",
            f"data.cache_dir={tmp / 'c'}"]  # fmt: skip


def vote_args(tmp: Path) -> list[str]:
    """``caslie vote`` with the demo's three tiny voters into ``tmp/votes``."""
    return ["--config", str(REPO / "configs/cqe/demo.yaml"), f"data.votes={tmp / 'votes'}",
            f"data.cache_dir={tmp / 'c'}"]  # fmt: skip


def train_args(tmp: Path, *more: str) -> list[str]:
    """``train.py`` on the short run under ``tmp/runs/f``."""
    return ["--config", str(REPO / "configs/demo.yaml"), f"run.output_dir={tmp / 'runs'}",
            f"data.cache_dir={tmp / 'cache'}", f"data.votes={REPO / 'data/sample/votes'}",
            "trainer.enable_progress_bar=false", *TRAIN, *more]  # fmt: skip


def config_of(args: list[str]):
    """The config a command line of :func:`caption_args` & co. loads."""
    return load_config(args[1], args[2:])


def caption_entries(folder: Path) -> dict[tuple[str, int], str]:
    """Every valid caption entry, by slot, asserting that no slot has two."""
    entries = list(read_shards(folder, on_error="skip"))
    counts = Counter((str(e["row_id"]), e["image_index"]) for e in entries)
    assert set(counts.values()) == {1}, [k for k, n in counts.items() if n > 1][:5]
    return {(str(e["row_id"]), e["image_index"]): e["caption"] for e in entries}


def vote_entries(folder: Path) -> dict[str, dict[tuple, str]]:
    """Every valid vote entry of every voter, by slot and caption, asserting no key has two."""
    out = {}
    for voter in sorted(p for p in folder.iterdir() if p.is_dir()):
        entries = list(read_shards(voter, on_error="skip"))
        counts = Counter((str(e["row_id"]), e["image_index"], e["caption_sha"]) for e in entries)
        assert set(counts.values()) == {1}, (
            voter.name,
            [k for k, n in counts.items() if n > 1][:5],
        )
        out[voter.name] = {(str(e["row_id"]), e["image_index"], e["caption_sha"]): e["vote"]
                           for e in entries}  # fmt: skip
    return out


def run_result(run_dir: Path) -> tuple[dict, int, dict[str, torch.Tensor]]:
    """What a finished run ends with: its metrics, the final step and the adapter weights."""
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    last = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    return metrics, last["global_step"], last["state_dict"]


def assert_same_run(run_dir: Path, clean: Path) -> None:
    """The run in ``run_dir`` finished where the uninterrupted ``clean`` run finished."""
    metrics, step, weights = run_result(run_dir)
    clean_metrics, clean_step, clean_weights = run_result(clean)
    assert (step, metrics) == (clean_step, clean_metrics)
    assert weights.keys() == clean_weights.keys()
    for key, value in weights.items():
        assert torch.allclose(value, clean_weights[key], atol=1e-6), key


@pytest.fixture(scope="module")
def clean_captions(tmp_path_factory) -> Path:
    """A caption cache filled by one uninterrupted ``caslie caption``."""
    tmp = tmp_path_factory.mktemp("clean-captions")
    run_caption(config_of(caption_args(tmp)))
    return tmp / "captions"


@pytest.fixture(scope="module")
def clean_votes(tmp_path_factory) -> Path:
    """A vote cache filled by one uninterrupted ``caslie vote``."""
    tmp = tmp_path_factory.mktemp("clean-votes")
    run_vote(config_of(vote_args(tmp)))
    return tmp / "votes"


class Snapshot:
    """A folder kept aside once built, put back in place before each test that damages it.

    Run folders are restored to the very path they were built at: their ``config.yaml`` names
    ``run.output_dir`` and ``data.cache_dir``, and a run refuses a folder whose config differs.
    """

    def __init__(self, path: Path):
        self.path, self.kept = path, path.with_name(path.name + "-kept")
        shutil.copytree(path, self.kept, symlinks=True)

    def restore(self) -> Path:
        """The folder as it was built (what the previous test did to it is gone)."""
        shutil.rmtree(self.path, ignore_errors=True)
        shutil.copytree(self.kept, self.path, symlinks=True)
        return self.path


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Snapshot:
    """The short run, trained and tested without interruption (``<root>/runs/f``, ``<root>/cache``)."""
    tmp = tmp_path_factory.mktemp("clean-run")
    run(config_of(train_args(tmp)))
    return Snapshot(tmp)


@pytest.fixture(scope="module")
def crashed_run(tmp_path_factory) -> Snapshot:
    """The short run, crashed before step :data:`CRASH_AT` + 1."""
    tmp = tmp_path_factory.mktemp("crashed-run")
    with pytest.raises(RuntimeError, match="preempted"):
        run(config_of(train_args(tmp)), callbacks=[CrashAt(CRASH_AT)])
    return Snapshot(tmp)


def copy_tree(src: Path, dst: Path) -> Path:
    """A private copy of a baseline folder."""
    shutil.copytree(src, dst, symlinks=True)
    return dst

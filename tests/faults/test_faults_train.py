"""Faults of ``train.py``: kill -9 at random moments, damaged run files (checkpoints, config.yaml,
wandb_run_id, status.json), a damaged tokenised cache, an unwritable run folder, a second run on
the same folder. Each ends in a finished run equal to the uninterrupted one, or in one line of
error that leaves the folder as it was."""

# Fixtures come from baselines.py: imported here, and named again as test arguments.
# ruff: noqa: F401, F811

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from tests.faults.baselines import (
    CRASH_AT,
    assert_same_run,
    clean_run,
    crashed_run,
    train_args,
)
from tests.faults.damage import DAMAGES, kill_when, one_line_error
from tests.test_run_lock import start_holder

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def train_main(capsys, root: Path, *more: str) -> tuple[int, str]:
    """``train.py`` in this process on the short run under ``root``: (exit code, stderr)."""
    code = train.main(train_args(root, *more))
    return code, capsys.readouterr().err


def digests(run_dir: Path) -> dict[str, str]:
    """Content hash of every file of a run folder but the lock (what "left as it was" compares)."""
    return {str(p.relative_to(run_dir)): hashlib.blake2b(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != ".lock"}  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_moment_then_resume_finishes_as_the_uninterrupted_run(
    tmp_path,
    capsys,
    clean_run,
    seed,
):
    delay = random.Random(seed).uniform(0.0, 6.0)  # training, validation and saves span ~6 s
    run_dir = tmp_path / "runs" / "f"
    started: list[float] = []

    def ready() -> bool:  # the delay counts from the moment the run folder takes its config
        if not started and (run_dir / "config.yaml").exists():
            started.append(time.monotonic())
        return bool(started) and time.monotonic() - started[0] >= delay

    proc = subprocess.Popen([sys.executable, "train.py", *train_args(tmp_path)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    kill_when(proc, ready)
    code, err = train_main(capsys, tmp_path, "--resume")
    assert code == 0, err[-3000:]
    assert_same_run(run_dir, clean_run.kept / "runs" / "f")


def _falls_back_to_best(capsys, root: Path, clean: Path) -> None:
    code, err = train_main(capsys, root, "--resume")
    assert code == 0, err[-3000:]
    assert "last.ckpt is unreadable or older: resuming from" in err and "best.ckpt (step 6)" in err
    assert_same_run(root / "runs" / "f", clean)


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_truncated_or_empty_last_ckpt_falls_back_to_best_and_ends_as_the_clean_run(
    capsys, clean_run, crashed_run, damage
):
    root = crashed_run.restore()
    DAMAGES[damage](root / "runs/f/checkpoints/last.ckpt")
    _falls_back_to_best(capsys, root, clean_run.kept / "runs/f")


def test_a_last_ckpt_with_flipped_bytes_falls_back_to_best(capsys, clean_run, crashed_run):
    root = crashed_run.restore()
    DAMAGES["flipped"](root / "runs/f/checkpoints/last.ckpt")
    _falls_back_to_best(capsys, root, clean_run.kept / "runs/f")


def test_no_readable_checkpoint_is_one_line_and_touches_nothing(capsys, crashed_run):
    root = crashed_run.restore()
    for ckpt in (root / "runs/f/checkpoints").glob("*.ckpt"):
        DAMAGES["truncated"](ckpt)
    before = digests(root / "runs/f")
    code, err = train_main(capsys, root, "--resume")
    assert code == 2
    assert "can be resumed from" in one_line_error(err, "train.py")
    assert digests(root / "runs/f") == before


def _resume_or_refuse(capsys, root: Path, clean: Path, name: str) -> None:
    """Resuming over a damaged ``name`` either ends as the clean run, or refuses in one line that
    names the file, with every checkpoint left as it was."""
    ckpts = {k: v for k, v in digests(root / "runs/f").items() if k.endswith(".ckpt")}
    code, err = train_main(capsys, root, "--resume")
    if code == 0:
        assert_same_run(root / "runs" / "f", clean)
        return
    assert code == 2, err[-3000:]
    assert name in one_line_error(err, "train.py")
    assert {k: v for k, v in digests(root / "runs/f").items() if k.endswith(".ckpt")} == ckpts


def test_a_truncated_wandb_run_id_resumes(capsys, clean_run, crashed_run):
    root = crashed_run.restore()
    DAMAGES["truncated"](root / "runs/f/wandb_run_id")
    _resume_or_refuse(capsys, root, clean_run.kept / "runs/f", "wandb_run_id")


@pytest.mark.parametrize("damage", ["empty", "flipped"])
def test_an_empty_or_flipped_wandb_run_id_resumes_or_is_one_line(
    capsys, clean_run, crashed_run, damage
):
    root = crashed_run.restore()
    DAMAGES[damage](root / "runs/f/wandb_run_id")
    _resume_or_refuse(capsys, root, clean_run.kept / "runs/f", "wandb_run_id")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_config_yaml_resumes_or_is_refused_naming_it(
    capsys,
    clean_run,
    crashed_run,
    damage,
):
    root = crashed_run.restore()
    DAMAGES[damage](root / "runs/f/config.yaml")
    _resume_or_refuse(capsys, root, clean_run.kept / "runs/f", "config.yaml")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_status_json_of_a_finished_run_asks_for_resume_which_finishes_it_again(
    capsys,
    clean_run,
    damage,
):
    root = clean_run.restore()
    DAMAGES[damage](root / "runs/f/status.json")
    code, err = train_main(capsys, root)  # the run no longer reads as finished
    assert code == 2 and "pass --resume" in one_line_error(err, "train.py")
    code, err = train_main(capsys, root, "--resume")
    assert code == 0, err[-3000:]
    assert_same_run(root / "runs" / "f", clean_run.kept / "runs/f")
    assert train_main(capsys, root)[0] == 0  # finished again: a rerun does nothing


def _tokenised_files(root: Path) -> list[Path]:
    return sorted((root / "cache" / "tokenised").glob("*/train/*.arrow"))


def _rebuilt_cleanly(capsys, root: Path) -> None:
    """A new run over the damaged tokenised cache rebuilds it with a warning and finishes."""
    code, err = train_main(capsys, root, "run.name=g", "trainer.max_steps=2")
    assert code == 0, err[-3000:]
    assert any(line.startswith("WARNING") and "tokenised" in line for line in err.splitlines())
    assert (root / "runs/g/metrics.json").is_file()


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_tokenised_split_is_rebuilt_with_a_warning(capsys, clean_run, damage):
    root = clean_run.restore()
    (arrow,) = _tokenised_files(root)
    DAMAGES[damage](arrow)  # a flip inside the data too: the manifest keeps the files' hashes
    _rebuilt_cleanly(capsys, root)


def test_a_damaged_tokenised_manifest_is_rebuilt_with_a_warning(capsys, clean_run):
    root = clean_run.restore()
    (manifest,) = (root / "cache" / "tokenised").glob("*/manifest.json")
    DAMAGES["truncated"](manifest)
    _rebuilt_cleanly(capsys, root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file modes")
def test_an_unwritable_run_folder_is_one_line(capsys, crashed_run):
    root = crashed_run.restore()
    run_dir = root / "runs" / "f"
    run_dir.chmod(0o500)
    try:
        code, err = train_main(capsys, root, "--resume")
    finally:
        run_dir.chmod(0o755)
    assert code == 2 and str(run_dir) in one_line_error(err, "train.py")


def test_a_run_folder_in_use_is_refused_and_left_as_it_was(capsys, clean_run, crashed_run):
    root = crashed_run.restore()
    run_dir = root / "runs" / "f"
    holder = start_holder(run_dir)  # the job this start would have raced (a requeue, a 2nd copy)
    try:
        before = digests(run_dir)
        code, err = train_main(capsys, root, "--resume")
        assert code == 2
        assert f"is in use by pid {holder.pid} on host " in one_line_error(err, "train.py")
        assert digests(run_dir) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    code, err = train_main(capsys, root, "--resume")  # the holder is gone: the run goes on
    assert code == 0, err[-3000:]
    assert_same_run(run_dir, clean_run.kept / "runs" / "f")


def test_the_crashed_baseline_is_what_the_fallback_tests_assume(crashed_run):
    ckpts = sorted(p.name for p in (crashed_run.kept / "runs/f/checkpoints").glob("*.ckpt"))
    assert ckpts == ["best.ckpt", "last.ckpt"] and CRASH_AT == 8

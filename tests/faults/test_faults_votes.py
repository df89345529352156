"""Faults of ``caslie vote`` and of the vote cache training reads: kill -9 at random moments, a
damaged voter shard. Each ends with every caption judged exactly once by every voter, as an
uninterrupted run judges it, or in one line of error naming the shard and line."""

# Fixtures come from baselines.py: imported here, and named again as test arguments.
# ruff: noqa: F401, F811

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import train
from caslie import cli
from tests.faults.baselines import clean_votes, train_args, vote_args, vote_entries
from tests.faults.damage import (
    empty,
    flip_line_start,
    kill_when,
    line_count,
    one_line_error,
    truncate_half,
)

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def vote(capsys, tmp: Path, *more: str) -> tuple[int, str]:
    """``caslie vote`` in this process into ``tmp/votes``: (exit code, stderr)."""
    code = cli.main(["vote", *vote_args(tmp), *more])
    return code, capsys.readouterr().err


def test_the_clean_cache_holds_three_voters(clean_votes):
    votes = vote_entries(clean_votes)
    assert len(votes) == 3 and len({len(v) for v in votes.values()}) == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_moment_then_rerun_casts_every_vote_once(
    tmp_path, capsys, clean_votes, seed
):
    total = sum(len(v) for v in vote_entries(clean_votes).values())
    written = random.Random(seed).randrange(0, total * 3 // 4)  # 0: killed while loading
    proc = subprocess.Popen([sys.executable, "-m", "caslie.cli", "vote", *vote_args(tmp_path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert kill_when(proc, lambda: line_count(tmp_path / "votes") >= written)
    code, err = vote(capsys, tmp_path)
    assert code == 0, err[-3000:]
    assert vote_entries(tmp_path / "votes") == vote_entries(clean_votes)


def _damaged_copy(tmp: Path, clean: Path, damage) -> Path:
    shutil.copytree(clean, tmp / "votes")
    (shard,) = (tmp / "votes" / "tiny-mistral").glob("*.jsonl")
    damage(shard)
    return shard


@pytest.mark.parametrize("damage", [truncate_half, empty], ids=["truncated", "empty"])
def test_a_truncated_or_empty_voter_shard_is_made_whole_by_a_rerun(
    tmp_path, capsys, clean_votes, damage
):
    _damaged_copy(tmp_path, clean_votes, damage)
    code, err = vote(capsys, tmp_path)
    assert code == 0, err[-3000:]
    assert vote_entries(tmp_path / "votes") == vote_entries(clean_votes)


def test_a_flipped_vote_line_is_one_error_naming_shard_and_line_and_skip_reads_past_it(
    tmp_path, capsys, clean_votes
):
    shard = _damaged_copy(tmp_path, clean_votes, lambda p: flip_line_start(p, 7))
    code, err = vote(capsys, tmp_path)
    assert code == 2
    assert f"{shard}:7" in one_line_error(err, "caslie")
    code, err = vote(capsys, tmp_path, "data.on_error=skip")
    assert code == 0, err[-3000:]
    assert vote_entries(tmp_path / "votes") == vote_entries(clean_votes)


def test_training_on_a_vote_cache_with_a_flipped_line_is_one_error_naming_it(tmp_path, capsys):
    votes = shutil.copytree(REPO / "data/sample/votes", tmp_path / "votes")
    shard = sorted(votes.rglob("*.jsonl"))[0]
    flip_line_start(shard, 3)
    code = train.main([*train_args(tmp_path), f"data.votes={votes}"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{shard}:3" in one_line_error(err, "train.py")
    assert not list((tmp_path / "runs/f").glob("checkpoints/*.ckpt"))  # refused before training

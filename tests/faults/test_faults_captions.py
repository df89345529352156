"""Faults of ``caslie caption``: kill -9 at random moments, and a damaged caption cache shard.
Each ends with every image slot captioned exactly once, as an uninterrupted run captions it, or
in one line of error naming the shard and line, with a documented way on."""

# Fixtures come from baselines.py: imported here, and named again as test arguments.
# ruff: noqa: F401, F811

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caslie import cli
from caslie.data.cache import read_shards
from tests.faults.baselines import caption_args, caption_entries, clean_captions
from tests.faults.damage import (
    empty,
    flip_line_start,
    kill_when,
    line_count,
    one_line_error,
    truncate_half,
)

REPO = Path(__file__).resolve().parents[2]
SLOTS = 844
"""Image slots of the shipped sample (every task, every split)."""
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def caption(capsys, tmp: Path, *more: str) -> tuple[int, str]:
    """``caslie caption`` in this process into ``tmp/captions``: (exit code, stderr)."""
    code = cli.main(["caption", *caption_args(tmp), *more])
    return code, capsys.readouterr().err


def test_the_clean_cache_holds_every_slot(clean_captions):
    assert len(caption_entries(clean_captions)) == SLOTS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_9_at_a_random_moment_then_rerun_captions_every_slot_once(
    tmp_path, capsys, clean_captions, seed
):
    written = random.Random(seed).randrange(0, SLOTS * 3 // 4)  # 0: killed while loading
    proc = subprocess.Popen([sys.executable, "-m", "caslie.cli", "caption", *caption_args(tmp_path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert kill_when(proc, lambda: line_count(tmp_path / "captions") >= written)
    code, err = caption(capsys, tmp_path)
    assert code == 0, err[-3000:]
    assert caption_entries(tmp_path / "captions") == caption_entries(clean_captions)


def _damaged_copy(tmp: Path, clean: Path, damage) -> Path:
    shutil.copytree(clean, tmp / "captions")
    (shard,) = (tmp / "captions").glob("*.jsonl")
    damage(shard)
    return shard


@pytest.mark.parametrize("damage", [truncate_half, empty], ids=["truncated", "empty"])
def test_a_truncated_or_empty_shard_is_made_whole_by_a_rerun(
    tmp_path, capsys, clean_captions, damage
):
    _damaged_copy(tmp_path, clean_captions, damage)
    code, err = caption(capsys, tmp_path)
    assert code == 0, err[-3000:]
    assert caption_entries(tmp_path / "captions") == caption_entries(clean_captions)
    assert list(read_shards(tmp_path / "captions"))  # a strict reader reads it all again


def test_a_flipped_line_is_one_error_naming_shard_and_line_and_skip_reads_past_it(
    tmp_path, capsys, clean_captions
):
    shard = _damaged_copy(tmp_path, clean_captions, lambda p: flip_line_start(p, 100))
    code, err = caption(capsys, tmp_path)
    assert code == 2
    assert f"{shard}:100" in one_line_error(err, "caslie")
    code, err = caption(capsys, tmp_path, "data.on_error=skip")  # the documented way past it
    assert code == 0, err[-3000:]
    assert caption_entries(tmp_path / "captions") == caption_entries(clean_captions)


def test_caslie_repair_moves_a_flipped_line_aside_and_a_rerun_makes_the_cache_whole(
    tmp_path, capsys, clean_captions
):
    shard = _damaged_copy(tmp_path, clean_captions, lambda p: flip_line_start(p, 100))
    assert cli.main(["repair", str(tmp_path / "captions")]) == 0
    assert f"{shard}:100" in capsys.readouterr().out
    assert len((shard.parent / "rejected" / shard.name).read_bytes().splitlines()) == 1
    code, err = caption(capsys, tmp_path)
    assert code == 0, err[-3000:]
    assert caption_entries(tmp_path / "captions") == caption_entries(clean_captions)
    assert len(list(read_shards(tmp_path / "captions"))) == SLOTS  # strict readers are fine too

import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caslie.data.cache import CaptionCache, ShardWriter, VoteCache, read_shards
from caslie.errors import CacheError


def _caption(row_id: str, idx: int, text: str, status: str = "ok", ts: float | None = None) -> dict:
    entry = {
        "row_id": row_id,
        "image_index": idx,
        "model": "m",
        "template": "t",
        "caption": text,
        "status": status,
    }
    if ts is not None:
        entry["ts"] = ts
    return entry


def test_roundtrip_and_merge_rule(tmp_path: Path):
    cache = CaptionCache(tmp_path)
    with cache.writer(rank=0) as w:
        w.write(_caption("r1", 0, "NA", status="failed", ts=2.0))
        w.write(_caption("r2", 0, "old", ts=1.0))
    with cache.writer(rank=1) as w:
        w.write(_caption("r1", 0, "a drill", ts=1.0))  # older, but a success beats a failure
        w.write(_caption("r2", 0, "new", ts=3.0))
    merged = cache.load()
    assert merged[("r1", 0)]["caption"] == "a drill"
    assert merged[("r2", 0)]["caption"] == "new"
    assert len(list(tmp_path.glob("*.jsonl"))) == 2  # one shard per writer


def test_torn_last_line_is_ignored_with_a_warning(tmp_path: Path, caplog):
    with ShardWriter(tmp_path) as w:
        w.write(_caption("r1", 0, "kept"))
    shard = next(tmp_path.glob("*.jsonl"))
    with shard.open("a") as fh:
        fh.write('{"row_id": "r2", "image_index": 0, "mod')  # a writer killed mid-line
    with caplog.at_level(logging.WARNING):
        entries = list(read_shards(tmp_path))
    assert [e["row_id"] for e in entries] == ["r1"]
    assert "torn last line" in caplog.text and shard.name in caplog.text


def test_corrupt_line_inside_a_shard_raises_with_its_location(tmp_path: Path):
    shard = tmp_path / "x.jsonl"
    shard.write_text(
        json.dumps(_caption("r1", 0, "a"))
        + "\n{broken\n"
        + json.dumps(_caption("r2", 0, "b"))
        + "\n"
    )
    with pytest.raises(CacheError, match=r"x.jsonl:2"):
        list(read_shards(tmp_path))


def test_several_models_need_a_choice(tmp_path: Path):
    with CaptionCache(tmp_path).writer() as w:
        w.write(_caption("r1", 0, "a"))
        w.write(dict(_caption("r1", 0, "b"), model="other"))
    with pytest.raises(CacheError, match="data.caption_model"):
        CaptionCache(tmp_path).load()
    assert CaptionCache(tmp_path).load(model="other")[("r1", 0)]["caption"] == "b"


def _write_votes(folder: str, rank: int, n: int) -> None:
    with VoteCache(folder).writer("v", rank=rank) as w:
        for i in range(n):
            w.write(
                {
                    "row_id": f"{rank}-{i}",
                    "image_index": 0,
                    "voter": "v",
                    "caption_sha": "s",
                    "vote": "yes",
                }
            )


def test_concurrent_writers_never_clash(tmp_path: Path):
    procs = [
        mp.get_context("spawn").Process(target=_write_votes, args=(str(tmp_path), r, 300))
        for r in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    votes = VoteCache(tmp_path).load("v")
    assert len(votes) == 4 * 300
    assert len(list((tmp_path / "v").glob("*.jsonl"))) == 4


_KILLED_WRITER = """
import sys
from caslie.data.cache import ShardWriter
w = ShardWriter(sys.argv[1])
i = 0
while True:
    w.write({"row_id": str(i), "image_index": 0, "model": "m", "caption": "x" * 5000})
    i += 1
"""


def test_reader_survives_a_writer_killed_with_sigkill(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path)])
    deadline = time.monotonic() + 20
    while (
        time.monotonic() < deadline
        and sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) < 2_000_000
    ):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    entries = list(read_shards(tmp_path))
    assert len(entries) > 100
    assert [int(e["row_id"]) for e in entries] == list(range(len(entries)))


def test_corrupt_entries_name_shard_and_line_and_are_skipped_or_moved_aside(tmp_path: Path, caplog):
    from caslie.cli import main

    good = [json.dumps(_caption(f"r{i}", 0, f"caption {i}")) for i in range(3)]
    no_model = json.dumps({k: v for k, v in _caption("x", 0, "a").items() if k != "model"})
    bad = [no_model, "[1, 2]", '{"row_id": "y", "image_index": "0", "model": "m", "caption": "c"}',
           "{broken"]  # fmt: skip
    shard = tmp_path / "caps" / "a.jsonl"
    shard.parent.mkdir()
    shard.write_text("\n".join([good[0], *bad, good[1], good[2]]) + "\n")
    with pytest.raises(
        CacheError, match=r"a.jsonl:2 \(no 'model'\); drop such lines with `caslie repair"
    ):
        CaptionCache(shard.parent).load()
    with caplog.at_level(logging.WARNING):
        kept = CaptionCache(shard.parent, on_error="skip").load()
    assert sorted(k[0] for k in kept) == ["r0", "r1", "r2"]
    assert "skipped 4 corrupt cache entries (first: " in caplog.text
    assert main(["repair", str(shard.parent)]) == 0
    assert (shard.parent / "rejected" / "a.jsonl").read_text().splitlines() == bad  # nothing lost
    assert shard.read_text().splitlines() == good
    assert sorted(k[0] for k in CaptionCache(shard.parent).load()) == ["r0", "r1", "r2"]


def test_corrupt_votes_are_caught_per_voter_and_repaired(tmp_path: Path):
    from caslie.data.cache import repair_cache

    votes = tmp_path / "votes"
    with VoteCache(votes).writer("judge") as w:
        w.write({"row_id": "r", "image_index": 0, "caption_sha": "s", "vote": "yes"})
    with (votes / "judge" / "extra.jsonl").open("w") as fh:
        fh.write('{"row_id": "q", "image_index": 0, "vote": "no"}\n')
    with pytest.raises(CacheError, match=r"extra.jsonl:1 \(no 'caption_sha'\)"):
        VoteCache(votes).load("judge")
    assert repair_cache(votes) == [f"{votes / 'judge' / 'extra.jsonl'}:1"]
    assert list(VoteCache(votes).load("judge")) == [("r", 0, "s")]


def test_a_caption_is_tied_to_the_image_it_was_made_from(tmp_path: Path):
    from caslie.data.cache import image_state, same_image

    (tmp_path / "img.png").write_bytes(b"first image bytes")
    entry = image_state("img.png", tmp_path)
    assert same_image(entry, "img.png", tmp_path)
    os.utime(tmp_path / "img.png", ns=(1, 1))  # touched, same content: still the same image
    assert same_image(entry, "img.png", tmp_path)
    (tmp_path / "img.png").write_bytes(b"other image bytes")  # same size, new content
    assert not same_image(entry, "img.png", tmp_path)
    assert not same_image(image_state("img.png", tmp_path), "other.png", tmp_path)
    (tmp_path / "img.png").unlink()
    assert not same_image(entry, "img.png", tmp_path)
    url = image_state("http://example.invalid/a.png", tmp_path, data=b"x")
    assert same_image(url, "http://example.invalid/a.png", tmp_path)  # known by its reference


def test_repairing_one_voters_folder_keeps_its_valid_votes(tmp_path: Path):
    from caslie.data.cache import repair_cache

    votes = tmp_path / "votes"
    with VoteCache(votes).writer("judge") as w:
        for i in range(3):
            w.write({"row_id": f"r{i}", "image_index": 0, "caption_sha": "s", "vote": "yes"})
    shard = next((votes / "judge").glob("*.jsonl"))
    shard.write_text(
        shard.read_text()
        + '{"row_id": "q", "vote": "no"}\n'
        + json.dumps({"row_id": "z", "image_index": 0, "caption_sha": "s", "vote": "no"})
        + "\n"
    )
    with pytest.raises(CacheError, match=rf"`caslie repair {votes / 'judge'}`"):
        VoteCache(votes).load("judge")
    assert repair_cache(votes / "judge") == [f"{shard}:4"]  # the folder the error names
    assert len(VoteCache(votes).load("judge")) == 4

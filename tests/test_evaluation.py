"""Scoring rows per split and task, and gathering them across ranks exactly once (a real 2-process gloo group)."""

import json
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from caslie.data.sampler import LengthGroupedBatchSampler
from caslie.evaluation import gather_rows, score_rows

N_ROWS, WORLD = 13, 2  # odd on purpose: the sampler repeats a row to give both ranks equal shares


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        lengths = [10 + (i * 7) % 5 for i in range(N_ROWS)]
        sampler = LengthGroupedBatchSampler(lengths, 4, shuffle=False, rank=rank, world_size=WORLD)
        seen = [i for batch in sampler for i in batch]
        rows = [{"split": "test_ind", "task": "sa", "id": f"r{i}", "rank": rank} for i in seen]
        gathered = gather_rows(rows)
        with open(f"{out_dir}/rank{rank}.json", "w") as fh:
            json.dump({"seen": seen, "gathered": [r["id"] for r in gathered]}, fh)
    finally:
        dist.destroy_process_group()


def test_each_row_is_scored_exactly_once_across_ranks(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    seen = [i for r in results for i in r["seen"]]
    assert len(seen) > N_ROWS  # the sampler padded with a repeat ...
    expected = sorted(f"r{i}" for i in range(N_ROWS))
    for r in results:  # ... and every rank ends with each row exactly once
        assert sorted(r["gathered"]) == expected


def test_score_rows_uses_each_splits_gold_labels_as_the_valid_set():
    rows = [
        {"split": "test_ind", "task": "cc", "gold": "A", "generated": "A"},
        {"split": "test_ind", "task": "cc", "gold": "B", "generated": "C"},  # C: no gold C here
        {"split": "test_ood", "task": "cc", "gold": "C", "generated": "C"},
    ]
    out = score_rows(rows)
    assert out["test_ind"]["cc"]["failed"] == 1 and out["test_ind"]["cc"]["r1"] == 1.0
    assert out["test_ood"]["cc"]["r1"] == 1.0
    assert [r["parsed"] for r in rows] == ["A", None, "C"]


def test_robust_parser_reports_rescued_rows():
    rows = [
        {"split": "val", "task": "ap", "gold": "yes", "generated": "Yes."},
        {"split": "val", "task": "ap", "gold": "no", "generated": "no"},
    ]
    assert score_rows([dict(r) for r in rows])["val"]["ap"]["failed"] == 1
    robust = score_rows([dict(r) for r in rows], "robust")["val"]["ap"]
    assert robust["failed"] == 0 and robust["rescued"] == 1 and robust["acc"] == 1.0

"""Evaluation under a real 2-process gloo group: every row counted once despite sampler padding."""

import json
import socket

import torch.distributed as dist
import torch.multiprocessing as mp

from caslie.data.sampler import LengthGroupedBatchSampler
from caslie.evaluation import gather_rows

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

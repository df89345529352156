"""Scoring rows per split and task, and gathering them across ranks exactly once (a real 2-process gloo group)."""

import json
import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from caslie.config import DEFAULT_SPLIT_MAP
from caslie.data.records import load_gold_rows
from caslie.data.sampler import LengthGroupedBatchSampler
from caslie.errors import DataError
from caslie.evaluation import evaluate_file, gather_rows, score_rows

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


def test_evaluate_file_counts_coverage_over_the_scored_split_and_null_as_failed(
    tmp_path, sample_rows
):
    rows = [
        dict(r, id=f"r{i}") for i, r in enumerate(r for r in sample_rows if r["split"] != "train")
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    test_ind = [r for r in load_gold_rows(str(data), DEFAULT_SPLIT_MAP) if r.split == "test_ind"]
    preds = [
        {"id": r.id, "prediction": None if i == 0 else r.output} for i, r in enumerate(test_ind)
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in preds))
    with pytest.raises(DataError, match=r"rows have no prediction \(e\.g\. row r\d+ at "):
        evaluate_file(str(data), path)  # val and test_ood have none
    out = evaluate_file(str(data), path, split="test")  # the other splits are not scored
    assert out.pop("coverage") == {"rows": len(test_ind), "predicted": len(test_ind), "missing": 0,
                                   "duplicate": 0, "unknown": 0, "failed": 1}  # fmt: skip
    assert sum(m["failed"] for m in out.values()) == 1
    assert sum(m["n"] for m in out.values()) == len(test_ind) - 1

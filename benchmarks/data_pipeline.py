"""Data pipeline at MMECInstruct scale: 56,000 synthetic training rows (8,000 per task).

Prints the cold build time (validate, fuse with MV votes, render, tokenise, save Arrow), the warm
time (cache hit), and the padding share of length-grouped training batches beside the share that
random batching gives on the same data. Targets: cold < 30 s, warm < 1 s (on 2 cores), padding <= 5%.

    python benchmarks/data_pipeline.py [--train-per-task 8000] [--micro-batch 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from caslie.config import load_config
from caslie.data.pipeline import build_dataset
from caslie.data.sample import write_synthetic
from caslie.data.sampler import LengthGroupedBatchSampler, padding_share
from caslie.pretrained import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-per-task", type=int, default=8000)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--model", default="tiny:mistral")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        n = write_synthetic(root / "syn", train_per_task=args.train_per_task, eval_per_task=0)
        print(f"generated {n} synthetic training rows + votes in {time.perf_counter() - t0:.1f} s")
        cfg = load_config(None, [
            f"data.source={root / 'syn' / 'rows.jsonl'}", f"data.votes={root / 'syn' / 'votes'}",
            "data.fusion=mv", "data.eval_splits=[]", f"data.cache_dir={root / 'cache'}",
        ])  # fmt: skip
        t0 = time.perf_counter()
        cold = build_dataset(cfg.data, tokenizer, splits=["train"])
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = build_dataset(cfg.data, tokenizer, splits=["train"])
        warm_s = time.perf_counter() - t0
        assert warm.from_cache and len(warm.splits["train"]) == len(cold.splits["train"]) == n
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in cold.stats.items())
        print(f"cold build: {cold_s:.1f} s ({steps})   target < 30 s")
        print(
            f"warm build: {warm_s:.2f} s (cache hit)   target < 1 s   cold/warm = {cold_s / warm_s:.0f}x"
        )
        lengths = warm.splits["train"]["length"]
        for name, grouped in (("length-grouped", True), ("random", False)):
            batches = list(
                LengthGroupedBatchSampler(
                    lengths, args.micro_batch, group_by_length=grouped, seed=0
                )
            )
            print(
                f"padding share, {name} batches of {args.micro_batch}: {100 * padding_share(lengths, batches):.2f}%"
            )
        print(f"caption used % (MV): {cold.manifest['caption_used_pct']['train']}")


if __name__ == "__main__":
    main()

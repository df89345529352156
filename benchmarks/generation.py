"""Evaluation generation: batched, left-padded, label-sized answers vs one prompt at a time.

The reference scripts generate each test prompt alone with ``max_new_tokens=100``. This runs the same
tiny model over the same sample prompts three ways and prints their times and ratios:

1. one prompt at a time, 100 new tokens (the reference way, the baseline);
2. batched and left-padded, 100 new tokens (what batching alone gives);
3. batched and left-padded, the budget sized to the labels (what evaluation runs).

It also checks that batched answers equal one-at-a-time answers token for token. Target: 3 is at
least 5x faster than 1.

    python benchmarks/generation.py [--rows 96] [--batch 32] [--model tiny:mistral]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from caslie.config import load_config
from caslie.data.pipeline import build_dataset
from caslie.data.tokenize import collate_generate
from caslie.generation import answer_budget, generate_answers
from caslie.models.lora import load_base_model
from caslie.pretrained import tokenizer_for


def _timed(fn) -> tuple[float, list[str]]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default="tiny:mistral")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            "configs/demo.yaml", [f"model.name_or_path={args.model}", f"data.cache_dir={Path(tmp)}"]
        )
        tokenizer = tokenizer_for(cfg.model)
        splits = build_dataset(cfg.data, tokenizer, ["test_ind", "test_ood", "val"]).splits
        feats = [row for name in ("test_ind", "test_ood", "val") for row in splits[name]][
            : args.rows
        ]
    model = load_base_model(cfg.model, tokenizer).eval()
    labels = {row["target"] for row in feats}
    budget = answer_budget(tokenizer, labels)
    pad = tokenizer.pad_token_id

    def one_at_a_time(max_new: int) -> list[str]:
        out = []
        for f in feats:
            ids = torch.tensor([f["input_ids"][: f["prompt_len"]]])
            out += generate_answers(model, tokenizer, ids, torch.ones_like(ids), max_new)
        return out

    def batched(max_new: int) -> list[str]:
        order = sorted(
            range(len(feats)), key=lambda i: -feats[i]["prompt_len"]
        )  # as the sampler does
        out: list[str] = [""] * len(feats)
        for start in range(0, len(order), args.batch):
            idx = order[start : start + args.batch]
            batch = collate_generate([feats[i] for i in idx], pad, 8)
            for i, text in zip(idx, generate_answers(model, tokenizer, batch["input_ids"],
                                                     batch["attention_mask"], max_new), strict=True):  # fmt: skip
                out[i] = text
        return out

    batched(budget)  # warm-up
    t_ref, ref = _timed(lambda: one_at_a_time(100))
    t_b100, b100 = _timed(lambda: batched(100))
    t_ours, ours = _timed(lambda: batched(budget))
    same = sum(a == b for a, b in zip(ref, b100, strict=True))
    print(
        f"{len(feats)} prompts, model {args.model}, batch {args.batch}, label budget {budget} tokens"
    )
    print(f"one at a time, 100 tokens (reference): {t_ref:7.2f} s")
    print(f"batched, 100 tokens:                   {t_b100:7.2f} s   {t_ref / t_b100:5.1f}x")
    print(
        f"batched, label-sized budget:           {t_ours:7.2f} s   {t_ref / t_ours:5.1f}x  (target >= 5x)"
    )
    print(f"batched answers equal to one-at-a-time answers: {same}/{len(feats)}")
    print(f"label-sized answers are prefixes of the 100-token answers: "
          f"{sum(b.startswith(o) for o, b in zip(ours, b100, strict=True))}/{len(feats)}")  # fmt: skip


if __name__ == "__main__":
    main()

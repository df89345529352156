"""What each part of caslie's training step gains: forward + backward with one part switched off.

Builds ``train.py``'s datamodule and LoRA module on synthetic rows (packed batches), then times
forward + backward over the same micro-batches with every part on, with each part off in turn, and
with all of them off, interleaved (one round of every variant, repeated, after one round that
warms up), and prints the median tokens/s and 'all on / this' for each:

- ``word dropout``: torch's dropout instead of :class:`~caslie.models.dropout.WordDropout`;
- ``answer-only last layer``: the whole last decoder layer (``caslie/models/answer_layer.py``);
- ``per-example attention``: SDPA with transformers' block-diagonal mask over the packed row
  instead of ``caslie_segments``;
- ``answer-position logits``: the LM head and loss at every position (the last layer whole too).

The optimiser step and the loop are not timed (``train_throughput.py`` measures the whole loop).

    python benchmarks/step_parts.py [--models tiny:mistral,tiny:wide-mistral] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PARTS = {
    "all on": {},
    "word dropout off": {"word_dropout": False},
    "answer-only last layer off": {"answer_layer": False},
    "per-example attention off": {"segments": False},
    "answer-position logits off": {"answer_logits": False},
    "all off": {"word_dropout": False, "answer_layer": False, "segments": False,
                "answer_logits": False},
}  # fmt: skip


def _module_and_batches(model: str, n_batches: int):
    import train_throughput

    import train
    from caslie.data.sample import write_synthetic

    work = Path(tempfile.mkdtemp())
    write_synthetic(work / "rows", train_per_task=48, eval_per_task=2, seed=0)
    cfg = train_throughput._config(work, model, ["data.packing=true"], False)
    dm, module = train.build_data_and_module(cfg, work / "run")
    dm.prepare_data()
    dm.setup("fit")
    module.bind(dm)
    module.configure_model()
    module.train()
    batches = [b for _, b in zip(range(n_batches), dm.train_dataloader(), strict=False)]
    return module, batches


def _switch(module, word_dropout=True, answer_layer=True, segments=True, answer_logits=True):
    """Set the module's parts; returns whether batches keep their ``logit_positions``."""
    import torch

    from caslie.models.dropout import WordDropout
    from caslie.models.segments import NAME

    for name, holder in module.model.named_modules():
        if name.endswith("lora_dropout"):
            for key, drop in list(holder.items()):
                holder[key] = WordDropout(drop.p) if word_dropout else torch.nn.Dropout(drop.p)
    module._answer_layer = answer_layer and answer_logits
    module.model.get_base_model().set_attn_implementation(NAME if segments else "sdpa")
    return answer_logits


def _tokens_per_s(module, batches, answer_logits: bool) -> float:
    start = time.perf_counter()
    for batch in batches:
        if not answer_logits:
            batch = {k: v for k, v in batch.items() if k != "logit_positions"}
        module(batch).backward()
    return sum(b["input_ids"].numel() for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tiny:mistral,tiny:wide-mistral")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for model in args.models.split(","):
        module, batches = _module_and_batches(model, args.batches)
        runs: dict[str, list[float]] = {name: [] for name in PARTS}
        for round_ in range(args.rounds + 1):  # the first round warms up and is not counted
            for name, switches in PARTS.items():
                tps = _tokens_per_s(module, batches, _switch(module, **switches))
                if round_:
                    runs[name].append(tps)
        top = statistics.median(runs["all on"])
        print(f"{model}  (forward + backward, {args.batches} packed micro-batches, "
              f"{args.threads} thread(s), median of {args.rounds})")  # fmt: skip
        for name, values in runs.items():
            tps = statistics.median(values)
            print(f"  {name:28s} {tps:8.0f} tok/s   all on / this = {top / tps:.2f}x")


if __name__ == "__main__":
    main()

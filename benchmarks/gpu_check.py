"""GPU paths in one go: bf16, SDPA vs flash-attention, packing, compile, Liger, LoRA on a 1.1B model.

Each variant is caslie's training path (``benchmarks/train_throughput.py``'s runs, one process
each) on the same examples in bf16, against the HF ``Trainer`` + ``peft`` baseline with
``group_by_length``; with more than one GPU, a 2-step FSDP run too. Prints one table: tokens/s,
MFU, peak GPU memory, padding, ratio to the baseline. Variants whose package is missing
(flash-attn, liger-kernel) are listed as skipped.

    bash benchmarks/gpu_check.sh [--model tiny:bench-1b] [--rows-per-task 24]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import measure, prepare  # noqa: E402

VARIANTS = [
    ("SDPA, padded", []),
    ("SDPA, packed", ["data.packing=true"]),
    ("flash-attn 2, packed", ["data.packing=true", "model.attn_implementation=flash_attention_2"]),
    ("SDPA, packed, compile", ["data.packing=true", "model.compile=true"]),
    ("SDPA, packed, Liger", ["data.packing=true", "model.liger=true"]),
]
NEEDS = {"flash-attn 2, packed": "flash_attn", "SDPA, packed, Liger": "liger_kernel"}


def _row(name: str, r: dict | None, base: float | None, note: str = "") -> str:
    if r is None:
        return f"| {name:<24} | {'-':>9} | {'-':>6} | {'-':>9} | {'-':>7} | {'-':>6} | {note}"
    mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
    ratio = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
    return (f"| {name:<24} | {r['tokens_per_s']:9.0f} | {mfu:>6} | {r.get('peak_gpu_mib', 0):9.0f} "
            f"| {100 * r['padding']:6.1f}% | {ratio:>6} | {note}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny:bench-1b")
    parser.add_argument("--rows-per-task", type=int, default=24)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here")
    print(f"device: {torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch "
          f"{torch.__version__}, bf16 supported: {torch.cuda.is_bf16_supported()}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.model, args.rows_per_task, gpu=True)
        base = measure(work, args.model, "hf-group", [], gpu=True)
        rows.append(_row("HF Trainer + peft (group)", base, base["tokens_per_s"]))
        for name, overrides in VARIANTS:
            missing = NEEDS.get(name)
            if missing and importlib.util.find_spec(missing) is None:
                rows.append(_row(name, None, None, f"skipped: no {missing} package"))
                continue
            try:
                r = measure(work, args.model, "caslie", overrides, gpu=True)
            except SystemExit as err:
                rows.append(_row(name, None, None, f"failed: {str(err).splitlines()[-1][:80]}"))
                continue
            rows.append(_row(name, r, base["tokens_per_s"]))
        if torch.cuda.device_count() > 1:
            fsdp = ["trainer.strategy=fsdp", "trainer.devices=2", "trainer.max_steps=2"]
            try:
                r = measure(work, args.model, "caslie", fsdp, gpu=True)
                rows.append(_row("FSDP x2, 2 steps", r, None, "ran"))
            except SystemExit as err:
                rows.append(_row("FSDP x2, 2 steps", None, None, f"failed: {str(err)[-80:]}"))
        else:
            rows.append(_row("FSDP x2, 2 steps", None, None, "skipped: one GPU"))
    print(f"| {'variant':<24} | {'tok/s':>9} | {'MFU':>6} | {'peak MiB':>9} | {'padding':>7} "
          f"| {'vs HF':>6} | note")  # fmt: skip
    print("\n".join(rows))


if __name__ == "__main__":
    main()

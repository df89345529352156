"""Training throughput: caslie's training path against an HF ``Trainer`` + ``peft`` baseline.

The baseline is set up as eCeLLM's ``finetune.py`` sets it up: ``get_peft_model`` with the same LoRA
config, answer-only labels (``-100`` over the prompt), ``DataCollatorForSeq2Seq`` padding to a
multiple of 8, ``logging_steps=1``, no saving, optionally ``group_by_length``. caslie runs
``train.py``'s own Trainer, module and datamodule (``build_trainer``, ``build_data_and_module``)
without the test at the end. Both train one epoch over the same tokenised examples (caslie's data
build, read by both), micro batch 4, effective batch 16, the same model weights and LoRA config.

Every measurement runs in its own process (peak RSS is per process), interleaved A/B/A/B, and
reports non-padding tokens per second over the training loop (model loading and the data build
are not timed), the padding share of what was computed, and peak RSS. The verdict is the ratio of
the medians.

    python benchmarks/train_throughput.py [--models tiny:mistral,tiny:wide-mistral,...] [--pairs 3]
        [--rows-per-task 48] [--caslie "data.packing=false"] [--baseline group|random]

Models: ``tiny:mistral`` (64 wide, 2 layers), ``tiny:wide-mistral`` (256 wide, 4 layers, the tiny
tokenizer's 2,048-row vocabulary) and ``tiny:wide-mistral-32k`` (the same with Mistral-7B-v0.3's
32,768-row embedding and LM head, as a real Mistral run computes them; the token sequences are the
same). caslie runs packed unless ``--caslie`` says otherwise. Targets on a 2-core CPU: caslie
>= 1.2x (tiny) and >= 1.5x (256-wide) the ``group_by_length`` baseline. ``--gpu`` runs a 1-3B-class random model in bf16 on a CUDA device and adds MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MICRO_BATCH, EFFECTIVE_BATCH = 4, 16


def _config(work: Path, model: str, extra: list[str], gpu: bool):
    from caslie.config import load_config

    device = ["trainer.accelerator=gpu", "trainer.precision=bf16-true", "model.dtype=bfloat16"]
    return load_config(ROOT / "configs" / "demo.yaml", [
        f"model.name_or_path={model}", f"data.source={work / 'rows' / 'rows.jsonl'}",
        f"data.votes={work / 'rows' / 'votes'}", f"data.cache_dir={work / 'cache'}",
        f"run.output_dir={work / 'runs'}", "run.overwrite=true", "logger.wandb.mode=disabled",
        "trainer.max_epochs=1", f"optim.micro_batch_size={MICRO_BATCH}",
        f"optim.effective_batch_size={EFFECTIVE_BATCH}", "optim.lr=1e-4", "data.eval_splits=[val]",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0",
        "eval.generate_on_val=false", "eval.select=loss", "trainer.checkpoint_every_minutes=null",
        *(device if gpu else []), *extra,
    ])  # fmt: skip


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _flops_fields(model, lengths: list[int], dtype) -> dict:
    """Nominal training FLOPs per token of ``model`` on examples of ``lengths``, and the peak."""
    import torch

    from caslie.mfu import (
        attention_context,
        matmul_parameters,
        model_shape,
        peak_flops,
        train_flops_per_token,
    )

    layers, hidden = model_shape(model)
    per_token = train_flops_per_token(matmul_parameters(model), layers, hidden,
                                      attention_context(lengths))  # fmt: skip
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return {"flops_per_token": per_token, "peak_flops": peak_flops(device, dtype or torch.float32)}


def run_hf(cfg, group_by_length: bool) -> dict:
    """One epoch of the baseline; returns tokens, padded tokens and seconds of the training loop."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    from caslie.data.pipeline import build_dataset
    from caslie.models.lora import load_base_model
    from caslie.pretrained import tokenizer_for

    tokenizer = tokenizer_for(cfg.model)
    train = build_dataset(cfg.data, tokenizer, splits=["train"]).splits["train"]
    ids, prompt_lens = train["input_ids"], train["prompt_len"]
    data = Dataset.from_dict({
        "input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
        "labels": [[-100] * p + x[p:] for x, p in zip(ids, prompt_lens, strict=True)],
    })  # fmt: skip
    dtype = torch.bfloat16 if cfg.trainer.precision.startswith("bf16") else None
    model = load_base_model(cfg.model, tokenizer, dtype)
    m = cfg.model
    model = get_peft_model(model, LoraConfig(
        r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, bias="none",
        target_modules=list(m.lora_target_modules), task_type="CAUSAL_LM",
    ))  # fmt: skip
    model.config.use_cache = False
    counts = {"tokens": 0, "padded": 0}
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt",
                                      padding=True)  # fmt: skip

    def counting_collator(features):
        batch = collator(features)
        counts["tokens"] += int(batch["attention_mask"].sum())
        counts["padded"] += batch["attention_mask"].numel()
        return batch

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            clock["end"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=MICRO_BATCH,
            gradient_accumulation_steps=EFFECTIVE_BATCH // MICRO_BATCH, num_train_epochs=1,
            learning_rate=cfg.optim.lr, warmup_steps=cfg.optim.warmup_ratio,  # a ratio when < 1
            lr_scheduler_type="cosine", logging_steps=1, save_strategy="no", report_to="none",
            # transformers 5 names eCeLLM's group_by_length=True this way
            train_sampling_strategy="group_by_length" if group_by_length else "random",
            bf16=dtype is not None, disable_tqdm=True,
            dataloader_num_workers=0, seed=cfg.run.seed, use_cpu=not torch.cuda.is_available(),
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=data,
                          data_collator=counting_collator, callbacks=[Clock()])  # fmt: skip
        trainer.train()
    flops = _flops_fields(model, [len(x) for x in ids], dtype)
    return {"seconds": clock["end"] - clock["start"], **counts, **flops}


def run_caslie(cfg) -> dict:
    """One epoch of ``train.py``'s training path (no test); the same figures as :func:`run_hf`."""
    import lightning as L
    import torch

    import train
    from callbacks.throughput import compute_dtype
    from caslie.data.packing import token_counts

    clock: dict[str, float] = {}
    counts = {"tokens": 0, "padded": 0}

    class Clock(L.Callback):
        def on_train_start(self, trainer, pl_module):
            clock["start"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            real, padded = token_counts(batch)
            counts["tokens"] += real
            counts["padded"] += padded
            clock["end"] = time.perf_counter()

    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm, module = train.build_data_and_module(cfg, run_dir)
    _, checkpoints = train._checkpoint_callbacks(cfg, run_dir)
    callbacks = [*checkpoints, train.TokenThroughput(), Clock()]
    trainer = train.build_trainer(cfg, run_dir, [], callbacks)
    trainer.fit(module, datamodule=dm)
    lengths = list(dm.splits["train"]["length"])
    dtype = compute_dtype(str(trainer.precision))
    flops = _flops_fields(module.model, lengths, dtype if dtype != torch.float32 else None)
    return {"seconds": clock["end"] - clock["start"], **counts, **flops}


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.manual_seed(0)
    cfg = _config(Path(args.work), args.model, args.override, args.gpu)
    if args.one == "caslie":
        out = run_caslie(cfg)
    else:
        out = run_hf(cfg, group_by_length=args.one == "hf-group")
    out["peak_rss_mib"] = _peak_rss_mib()
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def measure(work: Path, model: str, one: str, override: list[str], gpu: bool,
            threads: int | None = None) -> dict:  # fmt: skip
    """One run (``caslie``, ``hf-group`` or ``hf-random``) in its own process; its figures."""
    cmd = [sys.executable, __file__, "--one", one, "--work", str(work), "--model", model]
    cmd += [f"--override={o}" for o in override] + (["--gpu"] if gpu else [])
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{one} run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT ") :])
    out["tokens_per_s"] = out["tokens"] / out["seconds"]
    out["padding"] = 1 - out["tokens"] / out["padded"]
    out["mfu"] = (out["tokens_per_s"] * out["flops_per_token"] / out["peak_flops"]
                  if out.get("peak_flops") else None)  # fmt: skip
    return out


def prepare(work: Path, model: str, rows_per_task: int, gpu: bool) -> None:
    from caslie.data.pipeline import build_dataset
    from caslie.data.sample import write_synthetic
    from caslie.pretrained import tokenizer_for

    write_synthetic(work / "rows", train_per_task=rows_per_task, eval_per_task=2, seed=0)
    cfg = _config(work, model, [], gpu)
    build_dataset(cfg.data, tokenizer_for(cfg.model))


def line(name: str, runs: list[dict]) -> str:
    tps = statistics.median(r["tokens_per_s"] for r in runs)
    pad = statistics.median(r["padding"] for r in runs)
    rss = max(r["peak_rss_mib"] for r in runs)
    each = ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs)
    line = (f"  {name:<22} {tps:9.0f} tok/s (runs: {each})  padding {100 * pad:5.1f}%  "
            f"peak RSS {rss:6.0f} MiB")  # fmt: skip
    if runs[0].get("mfu") is not None:
        mfu = statistics.median(r["mfu"] for r in runs)
        line += f"  MFU {100 * mfu:4.1f}%  peak GPU {max(r['peak_gpu_mib'] for r in runs):6.0f} MiB"
    return line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="tiny:mistral,tiny:wide-mistral,tiny:wide-mistral-32k")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--rows-per-task", type=int, default=48)
    parser.add_argument("--baseline", choices=["group", "random"], default="group")
    parser.add_argument("--caslie", default="data.packing=true",
                        help="space-separated overrides for caslie's runs (default: packed)")  # fmt: skip
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--threads", type=int, help="CPU threads per run (default: torch's)")
    parser.add_argument("--one", choices=["caslie", "hf-group", "hf-random"])
    parser.add_argument("--work")
    parser.add_argument("--model")
    parser.add_argument("--override", action="append", default=[])
    args = parser.parse_args()
    if args.one:
        _child(args)
        return
    base = f"hf-{args.baseline}"
    ours = args.caslie.split()
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            prepare(work, model, args.rows_per_task, args.gpu)
            results: dict[str, list[dict]] = {base: [], "caslie": []}
            for _ in range(args.pairs):
                results[base].append(measure(work, model, base, [], args.gpu, args.threads))
                results["caslie"].append(
                    measure(work, model, "caslie", ours, args.gpu, args.threads)
                )
        med = {k: statistics.median(r["tokens_per_s"] for r in v) for k, v in results.items()}
        print(f"{model}  ({results['caslie'][0]['tokens']} non-padding tokens per epoch)")
        print(line(f"HF Trainer ({args.baseline})", results[base]))
        print(line("caslie " + " ".join(ours), results["caslie"]))
        print(f"  caslie / HF Trainer: {med['caslie'] / med[base]:.2f}x (ratio of medians)")


if __name__ == "__main__":
    main()

"""EC3 captioning: batched generation vs one image at a time, and a rerun over a full cache.

Times the tiny LLaVA on the sample's image slots (same prompts, same greedy budget) one image at a
time and in left-padded batches (target: at least 3x), checks the captions are the same, then runs
``caslie caption`` twice on a fresh cache (target: the rerun under 5% of the first run).

    python benchmarks/captioning.py [--images 96] [--batch 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rerun import report_rerun

from caslie.captioning import Captioner, instruction_for, run_caption
from caslie.config import load_config
from caslie.data.sources import default_image_root
from caslie.images import ImageLimits, load_image
from caslie.jobs import batches, select_records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("configs/caption/demo.yaml", [f"data.captions={Path(tmp) / 'captions'}",
                                                        f"caption.batch_size={args.batch}"])  # fmt: skip
        records = select_records(cfg, None, None, None)
        slots = [(r, j) for r in records for j in range(len(r.images))][: args.images]
        root, limits = default_image_root(cfg.data.source), ImageLimits(size=cfg.caption.image_size)
        images = [load_image(r.images[j], root, limits) for r, j in slots]
        prompts = [instruction_for(r, j, cfg.caption) for r, j in slots]
        captioner = Captioner(cfg.caption)
        captioner.caption(images[:2], prompts[:2])  # warm-up

        start = time.perf_counter()
        single = [captioner.caption([im], [p])[0] for im, p in zip(images, prompts, strict=True)]
        t_single = time.perf_counter() - start
        start = time.perf_counter()
        batched = [c for b in batches(list(zip(images, prompts, strict=True)), args.batch)
                   for c in captioner.caption([im for im, _ in b], [p for _, p in b])]  # fmt: skip
        t_batch = time.perf_counter() - start
        same = sum(a == b for a, b in zip(single, batched, strict=True))
        print(
            f"{len(slots)} images, {cfg.caption.model}, batch {args.batch}, {cfg.caption.max_new_tokens} new tokens"
        )
        print(f"one image at a time: {t_single:7.2f} s")
        print(f"batched:             {t_batch:7.2f} s   {t_single / t_batch:5.1f}x  (target >= 3x)")
        print(f"batched captions equal to one-at-a-time captions: {same}/{len(slots)}")

        report_rerun("caslie caption", lambda: run_caption(cfg))


if __name__ == "__main__":
    main()

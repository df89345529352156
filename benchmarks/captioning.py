"""EC3 captioning: batched generation vs one image at a time, and a rerun over a full cache.

Times the tiny LLaVA on the sample's image slots (same prompts, same greedy budget) one image at a
time, in left-padded batches in slot order, and as ``caslie caption`` batches them (prompts of
similar length and images of one size together, the next batch preprocessed while the model works;
target: at least 3x), checks the captions are the same, then runs ``caslie caption`` twice on a
fresh cache (target: the rerun under 5% of the first run).

The machine may be shared, so the timings come in rounds: each round captions a slice of the images
one at a time (every ``rounds``-th image; the slices together are one full run) and then all of them
each batched way. A round's ratio is its slice's estimate of the full one-at-a-time time over the
batched time; the figures are the median over the rounds, with their range.

    python benchmarks/captioning.py [--images 96] [--batch 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from rerun import report_rerun
from rounds import time_in_rounds

from caslie.captioning import (
    Captioner,
    batch_order,
    caption_ahead,
    instruction_for,
    prefetched_batches,
    run_caption,
)
from caslie.config import load_config
from caslie.data.sources import default_image_root
from caslie.images import ImageLimits, load_image
from caslie.jobs import batches, select_records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
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

        def slot_order() -> list[str]:
            return [c for b in batches(list(range(len(slots))), args.batch)
                    for c in captioner.caption([images[i] for i in b], [prompts[i] for i in b])]  # fmt: skip

        def as_caption() -> list[str]:
            # The same ordering and look-ahead as caslie caption, on images already in memory.
            keys = sorted(enumerate(prompts), key=lambda k: len(k[1]), reverse=True)
            work = (([k[0] for k in batch], fetched, [k[1] for k in batch]) for batch, fetched
                    in prefetched_batches(keys, args.batch, lambda k: images[k[0]], batch_order(captioner.kind)))  # fmt: skip
            out = [""] * len(slots)
            for rows, texts in caption_ahead(captioner, work):
                for i, text in zip(rows, texts, strict=True):
                    out[i] = text
            return out

        ways = {"batched, slot order": slot_order, "as caslie caption batches": as_caption}
        single = [""] * len(slots)

        def one_at_a_time(i: int) -> None:
            single[i] = captioner.caption([images[i]], [prompts[i]])[0]

        timing = time_in_rounds(len(slots), args.rounds, one_at_a_time, ways)
        t_single, times, ratios, results = (timing.reference, timing.times, timing.ratios,
                                            timing.results)  # fmt: skip

        print(f"{len(slots)} images, {cfg.caption.model}, batch {args.batch}, "
              f"{cfg.caption.max_new_tokens} new tokens, {args.rounds} rounds")  # fmt: skip
        print(f"one image at a time:        {statistics.median(t_single):7.2f} s "
              f"(median of the rounds' estimates; {min(t_single):.1f}-{max(t_single):.1f} s)")  # fmt: skip
        for name in ways:
            target = "  (target >= 3x)" if ways[name] is as_caption else ""
            print(f"{name + ':':28s}{statistics.median(times[name]):7.2f} s "
                  f"{statistics.median(ratios[name]):6.1f}x  "
                  f"[{min(ratios[name]):.1f}-{max(ratios[name]):.1f}x]{target}")  # fmt: skip
        for name, got in results.items():
            same = sum(a == b for a, b in zip(single, got, strict=True))
            print(f"{name}: captions equal to one-at-a-time captions: {same}/{len(slots)}")

        report_rerun("caslie caption", lambda: run_caption(cfg))


if __name__ == "__main__":
    main()

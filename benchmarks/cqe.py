"""CQE voting: batched yes/no scoring vs the reference way, and a rerun over a full cache.

The reference scripts ask each voter one prompt at a time and generate 16 tokens. This times, on the
same tiny voter and the sample's caption prompts:

1. one prompt at a time, 16 generated greedy tokens, the answer read from its start (the baseline);
2. batched score mode over every prompt: one forward pass per batch, P(yes) against P(no);
3. as ``caslie vote`` runs it: each distinct prompt once (an SR product appears in many users'
   histories with the same caption and title, so many prompts repeat), the prompts of one task
   batched by token length, their shared opening run once; and the same without that prefix reuse;

and reports their agreement on the prompts whose generated answer starts with yes or no (target:
100%), then runs ``caslie vote`` twice on a fresh cache (target: the rerun under 5% of the first).

The machine may be shared, so the timings come in rounds: each round runs a slice of the reference
(every ``rounds``-th prompt; the slices together are one full reference run) and then each batched
way once. A round's ratio is its slice's estimate of the full reference time over the batched time,
measured minutes apart at most; the figures are the median over the rounds, with their range.

    python benchmarks/cqe.py [--voter tiny:voter-llama] [--batch 32] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from rerun import report_rerun
from rounds import time_in_rounds

from caslie.config import load_config
from caslie.cqe import Voter, cast_votes, group_by_prompt, read_answer, run_vote, vote_jobs
from caslie.jobs import select_records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--voter", default="tiny:voter-llama")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("configs/cqe/demo.yaml", [f"data.votes={Path(tmp) / 'votes'}", f"cqe.batch_size={args.batch}",
                                                    f"data.cache_dir={Path(tmp) / 'c'}"])  # fmt: skip
        jobs, _ = vote_jobs(cfg, select_records(cfg, None, None, None))
        prompts, tasks = [j.prompt for j in jobs], [j.record.task for j in jobs]
        groups = group_by_prompt(jobs)
        voter = Voter("bench", args.voter, cfg.cqe)
        voter.score(prompts[: args.batch])  # warm-up
        voter.generate(prompts[:1], 16)

        def every_prompt() -> list[float]:
            out = [0.0] * len(prompts)
            for rows, p_yes in voter.score_stream(prompts, args.batch, tasks):
                for i, p in zip(rows, p_yes, strict=True):
                    out[i] = p
            return out

        def as_vote() -> list[float]:
            by_prompt = {}
            for batch, votes in cast_votes(voter, groups, "score", args.batch):
                by_prompt.update({p: v["p_yes"] for p, v in zip(batch, votes, strict=True)})
            return [by_prompt[p] for p in prompts]  # fanned out to every slot

        def no_prefix() -> list[float]:
            voter.reuse_prefix = False
            try:
                return as_vote()
            finally:
                voter.reuse_prefix = True

        ways = {
            "batched yes/no scoring, every prompt": every_prompt,
            "each distinct prompt once, no prefix reuse": no_prefix,
            "as caslie vote: distinct prompts, prefix once": as_vote,
        }
        answers: list[str] = [""] * len(prompts)

        def reference(i: int) -> None:
            answers[i] = voter.generate([prompts[i]], 16)[0]

        timing = time_in_rounds(len(prompts), args.rounds, reference, ways)
        t_ref, times, ratios, results = (
            timing.reference,
            timing.times,
            timing.ratios,
            timing.results,
        )

        scores = results["batched yes/no scoring, every prompt"]
        for name, got in results.items():
            worst = max(abs(a - b) for a, b in zip(scores, got, strict=True))
            assert worst < 1e-4, f"{name} changed a score by {worst}"
        readable = [
            (read_answer(a), s) for a, s in zip(answers, scores, strict=True) if read_answer(a)
        ]
        agree = sum(a == ("yes" if s >= 0.5 else "no") for a, s in readable)
        print(f"{len(prompts)} caption prompts ({len(groups)} distinct), voter {args.voter}, "
              f"batch {args.batch}, {args.rounds} rounds, {torch.get_num_threads()} torch threads")  # fmt: skip
        print(f"one at a time, 16 generated tokens (reference): {statistics.median(t_ref):7.2f} s "
              f"(median of the rounds' estimates; {min(t_ref):.1f}-{max(t_ref):.1f} s)")  # fmt: skip
        for name in ways:
            low, high = min(ratios[name]), max(ratios[name])
            target = "  (target >= 40x)" if ways[name] is as_vote else ""
            print(f"{name + ':':48s}{statistics.median(times[name]):7.2f} s "
                  f"{statistics.median(ratios[name]):6.1f}x  [{low:.1f}-{high:.1f}x]{target}")  # fmt: skip
        print(f"agreement where the generated answer starts with yes/no: {agree}/{len(readable)} "
              f"({100 * agree / max(1, len(readable)):.1f}%; {len(readable)}/{len(prompts)} readable)")  # fmt: skip

        report_rerun(f"caslie vote, {len(cfg.data.voters)} voters", lambda: run_vote(cfg))


if __name__ == "__main__":
    main()

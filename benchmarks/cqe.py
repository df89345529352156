"""CQE voting: batched yes/no scoring vs the reference way, and a rerun over a full cache.

The reference scripts ask each voter one prompt at a time and generate 16 tokens. This times, on the
same tiny voter and the sample's caption prompts:

1. one prompt at a time, 16 generated tokens, the answer read from its start (the baseline);
2. batched score mode over every prompt: one forward pass per batch, P(yes) against P(no);
3. as ``caslie vote`` runs it: batched score mode, each distinct prompt once (an SR product appears
   in many users' histories with the same caption and title, so many prompts repeat);

and reports their agreement on the prompts whose generated answer starts with yes or no (target:
100%), then runs ``caslie vote`` twice on a fresh cache (target: the rerun under 5% of the first).

    python benchmarks/cqe.py [--voter tiny:voter-llama] [--batch 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from rerun import report_rerun

from caslie.config import load_config
from caslie.cqe import Voter, group_by_prompt, read_answer, run_vote, vote_jobs
from caslie.jobs import batches, select_records


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--voter", default="tiny:voter-llama")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("configs/cqe/demo.yaml", [f"data.votes={Path(tmp) / 'votes'}", f"cqe.batch_size={args.batch}",
                                                    f"data.cache_dir={Path(tmp) / 'c'}"])  # fmt: skip
        jobs, _ = vote_jobs(cfg, select_records(cfg, None, None, None))
        prompts = sorted(
            (j.prompt for j in jobs), key=len, reverse=True
        )  # as caslie vote orders them
        voter = Voter("bench", args.voter, cfg.cqe)
        voter.score(prompts[: args.batch])  # warm-up

        start = time.perf_counter()
        answers = [voter.generate([p], 16)[0] for p in prompts]
        t_ref = time.perf_counter() - start
        start = time.perf_counter()
        scores = [s for batch in batches(prompts, args.batch) for s in voter.score(batch)]
        t_score = time.perf_counter() - start
        start = time.perf_counter()
        distinct = list(group_by_prompt(jobs))
        by_prompt = dict(
            zip(
                distinct,
                [s for b in batches(distinct, args.batch) for s in voter.score(b)],
                strict=True,
            )
        )
        fanned = [by_prompt[p] for p in prompts]
        t_vote = time.perf_counter() - start

        readable = [
            (read_answer(a), s) for a, s in zip(answers, scores, strict=True) if read_answer(a)
        ]
        agree = sum(a == ("yes" if s >= 0.5 else "no") for a, s in readable)
        print(f"{len(prompts)} caption prompts, voter {args.voter}, batch {args.batch}")
        print(f"one at a time, 16 generated tokens (reference): {t_ref:7.2f} s")
        print(
            f"batched yes/no scoring, every prompt:           {t_score:7.2f} s   {t_ref / t_score:5.1f}x"
        )
        print(f"batched, each of {len(distinct)} distinct prompts once:     {t_vote:7.2f} s   "
              f"{t_ref / t_vote:5.1f}x  (target >= 20x)")  # fmt: skip
        assert all(abs(a - b) < 1e-4 for a, b in zip(scores, fanned, strict=True)), (
            "dedup changed a score"
        )
        print(f"agreement where the generated answer starts with yes/no: {agree}/{len(readable)} "
              f"({100 * agree / max(1, len(readable)):.1f}%; {len(readable)}/{len(prompts)} readable)")  # fmt: skip

        report_rerun(f"caslie vote, {len(cfg.data.voters)} voters", lambda: run_vote(cfg))


if __name__ == "__main__":
    main()

"""The shipped sample and a synthetic MMECInstruct generator of any size.

Both write rows in the exact hub schema (``task``, ``split``, ``setting``, ``instruction``, ``input``,
``options``, ``output``, ``images``, ``caption_info``; JSON fields as strings) from the hand-written
catalogue in :mod:`caslie.data.catalog`: Tools products in-domain, Sports products out-of-domain,
label ratios as the paper's (ap 3:5, prp 4:3:1, psi 1:3, mpc 20:7:1:4).

The synthetic generator marks a known share of rows ``caption_dependent``: their label can only be
inferred from the caption (the text carries no cue). On the other rows the cue is in the text and
the caption is plain. Votes follow suit (voters mostly say yes to cue-bearing captions), so a
pipeline that really uses captions through MV beats text-only on the caption-dependent rows.

Command line::

    python -m caslie.data.sample shipped data/sample
    python -m caslie.data.sample synthetic OUT_DIR --train-per-task 8000
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from caslie.config import PAPER_VOTERS
from caslie.data.cache import VoteCache, text_hash
from caslie.data.catalog import (
    INDOMAIN_CATEGORIES,
    OOD_CATEGORIES,
    QUERIES_COMPLEMENT,
    QUERIES_SUBSTITUTE,
    SPORTS,
    TOOLS,
    Product,
)
from caslie.data.records import content_id
from caslie.tasks import TASKS

LETTERS = "ABCDEFGHIJ"
PRP_OPTIONS = [
    "A: Users who buy product 1 may also buy product 2.",
    "B: Users who view product 1 may also view product 2.",
    "C: The product 1 is similar with the product 2.",
]
MPC_OPTIONS = [
    "A: The product is relevant to the query, and satisfies all the query specifications.",
    "B: The product is somewhat relevant. It fails to fulfill some aspects of the query but the "
    "product can be used as a functional substitute.",
    "C: The product does not fulfill the query, but could be used in combination with a product "
    "exactly matching the query.",
    "D: The product is irrelevant to the query.",
]
SA_OPTIONS = ["A: very positive", "B: positive", "C: neutral", "D: negative", "E: very negative"]

# Label shares from the paper (Appendix B); sa follows Amazon review star shares.
RATIOS: dict[str, dict[str, float]] = {
    "ap": {"yes": 3, "no": 5},
    "psi": {"yes": 1, "no": 3},
    "prp": {"A": 4, "B": 3, "C": 1},
    "mpc": {"A": 20, "B": 7, "C": 1, "D": 4},
    "sa": {"A": 12, "B": 4, "C": 2, "D": 1, "E": 2},
}
SHIPPED_COUNTS = {"train": 24, "val": 6, "test_ind": 12, "test_ood": 12}
SPLIT_FIELDS = {
    "train": ("train", "IND"),
    "val": ("val", "IND"),
    "test_ind": ("test", "IND"),
    "test_ood": ("test", "OOD"),
}

# Cue phrases that decide the label of synthetic rows (in the caption, or in the text).
CUES: dict[str, dict[str, str]] = {
    "ap": {
        "yes": "the box lists exactly this detail in its specification panel",
        "no": "the packaging gives no detail on this point",
    },
    "psi": {
        "yes": "it does the same job as the requested item",
        "no": "it serves a different purpose than the request",
    },
    "prp": {
        "A": "shown bundled in one kit with the other item",
        "B": "shown on a comparison shelf beside the other item",
        "C": "looks nearly identical to the other item",
    },
    "mpc": {
        "A": "matches every detail of the search",
        "B": "can stand in for the requested item",
        "C": "is an accessory used together with the requested item",
        "D": "has nothing to do with the search",
    },
    "sa": {
        "A": "the reviewer photo shows it spotless and working perfectly",
        "B": "the reviewer photo shows it clean with light use",
        "C": "the reviewer photo shows it plain and unremarkable",
        "D": "the reviewer photo shows it scratched and dented",
        "E": "the reviewer photo shows it shattered into pieces",
    },
}
_ORDINALS = ["1st", "2nd", "3rd"] + [f"{i}th" for i in range(4, 21)]


def quota(n: int, weights: dict[str, float]) -> list[str]:
    """``n`` labels in the given proportions (largest remainder), in label order."""
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[
        : n - sum(counts.values())
    ]:
        counts[k] += 1
    return [k for k in weights for _ in range(counts[k])]


def _image(p: Product) -> str:
    return f"images/{p.pid}.png"


def _row(task: str, inp: Any, options: list[str] | None, output: str,
         products: list[Product], captions: list[str]) -> dict[str, Any]:  # fmt: skip
    return {
        "task": TASKS[task].name,
        "split": "",  # set by the caller
        "setting": "",
        "instruction": TASKS[task].instruction,
        "input": json.dumps(inp),
        "options": json.dumps(options) if options is not None else json.dumps([]),
        "output": output,
        "images": json.dumps([_image(p) for p in products]),
        "caption_info": json.dumps(captions),
    }


class RowBuilder:
    """Builds one row per call for a task, label and product pool.

    ``mode`` is ``catalog`` (hand-written text as it is: the shipped sample), ``text`` (synthetic,
    the label cue in the text, a plain caption) or ``caption`` (synthetic, the cue only in the
    caption).
    """

    def __init__(self, rng: random.Random, pool: list[Product], ood: bool):
        self.rng, self.pool, self.ood = rng, pool, ood

    def pick(self, k: int = 1) -> list[Product]:
        return self.rng.sample(self.pool, k)

    def caption(self, p: Product, task: str, label: str, mode: str) -> str:
        if mode == "caption":
            return f"{p.caption.split(',')[0]}; {CUES[task][label]}."
        return p.caption

    def ap(self, label: str, mode: str) -> dict:
        (p,) = self.pick()
        answerable = [q for q, a in p.questions if a]
        unanswerable = [q for q, a in p.questions if not a]
        if mode == "catalog":
            if label == "no" and unanswerable and self.rng.random() < 0.6:
                question, document = self.rng.choice(unanswerable), p.document
            else:  # "no" here: the question asked next to another product's document
                question = self.rng.choice(answerable or [q for q, _ in p.questions])
                others = [o for o in self.pool if o.pid != p.pid]
                document = p.document if label == "yes" else self.rng.choice(others).document
        elif mode == "text":
            question = self.rng.choice([q for q, _ in p.questions])
            document = f"{p.document} {CUES['ap'][label].capitalize()}."
        else:
            question = self.rng.choice([q for q, _ in p.questions])
            document = "Details are listed on the product page."
        inp = {"question": question, "document": document}
        return _row("ap", inp, [], label, [p], [self.caption(p, "ap", label, mode)])

    def cc(self, label: str, mode: str) -> dict:
        (p,) = self.pick()
        cats = OOD_CATEGORIES if self.ood else INDOMAIN_CATEGORIES
        wrong = self.rng.sample([c for c in cats if c != p.category], 5)
        pos = LETTERS.index(label)
        names = wrong[:pos] + [p.category] + wrong[pos:]
        options = [f"{LETTERS[i]}: {c}" for i, c in enumerate(names)]
        title = p.title if mode != "caption" else f"{p.brand} item {self.rng.randint(1000, 9999)}"
        cap = (
            p.caption
            if mode != "caption"
            else f"The image shows a {p.category.lower().rstrip('s')}."
        )
        return _row("cc", {"title": title}, options, label, [p], [cap])

    def prp(self, label: str, mode: str) -> dict:
        p1, p2 = self.pick(2)
        inp = {"product 1": p1.title, "product 2": p2.title}
        if mode == "text":
            inp["product 1"] = f"{p1.title} ({CUES['prp'][label]})"
        caps = [self.caption(p1, "prp", label, mode), p2.caption]
        return _row("prp", inp, PRP_OPTIONS, label, [p1, p2], caps)

    def _query(self, p: Product, relation: str) -> str:
        if relation == "exact":
            return self.rng.choice(p.queries)
        if relation == "substitute" and p.pid in QUERIES_SUBSTITUTE:
            return QUERIES_SUBSTITUTE[p.pid]
        if relation == "complement" and p.pid in QUERIES_COMPLEMENT:
            return QUERIES_COMPLEMENT[p.pid]
        return self.rng.choice(self.rng.choice([q for q in self.pool if q.pid != p.pid]).queries)

    def _query_product(self, relation: str) -> Product:
        table = {"substitute": QUERIES_SUBSTITUTE, "complement": QUERIES_COMPLEMENT}.get(relation)
        pool = [p for p in self.pool if table is None or p.pid in table] or self.pool
        return self.rng.choice(pool)

    def psi(self, label: str, mode: str) -> dict:
        relation = (
            "substitute"
            if label == "yes"
            else self.rng.choice(["exact", "irrelevant", "complement"])
        )
        p = self._query_product(relation)
        query = self._query(p, relation) if mode == "catalog" else self.rng.choice(p.queries)
        title = p.title if mode != "text" else f"{p.title}, {CUES['psi'][label]}"
        return _row("psi", {"query": query, "product title": title}, [], label, [p],
                    [self.caption(p, "psi", label, mode)])  # fmt: skip

    def mpc(self, label: str, mode: str) -> dict:
        relation = {"A": "exact", "B": "substitute", "C": "complement", "D": "irrelevant"}[label]
        p = self._query_product(relation)
        query = self._query(p, relation) if mode == "catalog" else self.rng.choice(p.queries)
        title = p.title if mode != "text" else f"{p.title}, {CUES['mpc'][label]}"
        return _row("mpc", {"query": query, "product title": title}, MPC_OPTIONS, label, [p],
                    [self.caption(p, "mpc", label, mode)])  # fmt: skip

    def sa(self, label: str, mode: str) -> dict:
        stars = 5 - LETTERS.index(label)
        p = self.rng.choice(self.pool)
        if mode == "catalog":
            matching = [text for text, s in p.reviews if s == stars]
            review = matching[0] if matching else _REVIEW_BY_STARS[stars].format(title=p.title)
        elif mode == "text":
            review = f"Bought the {p.title}. {CUES['sa'][label].capitalize()}."
        else:
            review = f"Bought the {p.title} for my workshop."
        return _row("sa", {"review": review}, SA_OPTIONS, label, [p],
                    [self.caption(p, "sa", label, mode)])  # fmt: skip

    def sr(self, label: str, mode: str) -> dict:
        n_hist = self.rng.randint(3, 5)
        items = self.pick(n_hist + 5)
        history, candidates = items[:n_hist], items[n_hist:]
        answer = LETTERS.index(label)
        target = candidates[answer]
        # The user's next purchase shares the brand or category of their latest one (catalog mode).
        hist_text = [
            f"{_ORDINALS[i]}: {p.title}. {p.category}. {p.brand}." for i, p in enumerate(history)
        ]
        if mode == "text":
            hist_text[-1] += f" Then looked at {target.title}."
        options = [
            f"{LETTERS[i]}: {p.title}. {p.category}. {p.brand}." for i, p in enumerate(candidates)
        ]
        caps = [p.caption for p in history] + [p.caption for p in candidates]
        if mode == "caption":
            caps[n_hist - 1] = (
                f"{history[-1].caption.split(',')[0]}; the user pairs it with {target.title}."
            )
        return _row("sr", hist_text, options, label, history + candidates, caps)


_REVIEW_BY_STARS = {
    5: "The {title} is excellent, exactly as described and works perfectly.",
    4: "Good {title}, does the job well with a couple of minor quirks.",
    3: "The {title} is okay. Nothing special, about what I expected for the price.",
    2: "Disappointed with the {title}; it stopped working properly after a few uses.",
    1: "The {title} broke on the first day. Complete waste of money.",
}


def _labels(task: str, n: int, rng: random.Random) -> list[str]:
    if task in RATIOS:
        labels = quota(n, RATIOS[task])
    else:  # cc, sr: the gold option's position is uniform
        k = 6 if task == "cc" else 5
        labels = [LETTERS[i % k] for i in range(n)]
    rng.shuffle(labels)
    return labels


def _build(task: str, split: str, n: int, rng: random.Random, modes: list[str],
           seen: set | None = None) -> list[dict]:  # fmt: skip
    """``n`` rows of one task and split; with ``seen``, no two rows share their content."""
    ood = split == "test_ood"
    pool = SPORTS if ood else TOOLS
    builder = RowBuilder(rng, pool, ood)
    rows = []
    for label, mode in zip(_labels(task, n, rng), modes, strict=True):
        for _attempt in range(200):
            row = getattr(builder, task)(label, mode)
            key = (row["task"], row["input"], row["options"])
            if seen is None or key not in seen:
                break
        else:
            raise RuntimeError(f"the catalogue is too small for {n} distinct {task} rows")
        if seen is not None:
            seen.add(key)
        raw_split, setting = SPLIT_FIELDS[split]
        row["split"], row["setting"] = raw_split, setting
        rows.append(row)
    return rows


def shipped_rows(seed: int = 7) -> list[dict]:
    """The shipped sample: every task, train/val/test IND (and test OOD where the paper has it)."""
    rng = random.Random(seed)
    rows: list[dict] = []
    seen: set = set()  # no row repeats another, within or across splits (no train/test leakage)
    for task in TASKS:
        for split, n in SHIPPED_COUNTS.items():
            if split == "test_ood" and not TASKS[task].has_ood:
                continue
            rows.extend(_build(task, split, n, rng, ["catalog"] * n, seen))
    return rows


def synthetic_rows(
    train_per_task: int = 8000,
    eval_per_task: int = 1000,
    caption_dependent_share: float = 0.5,
    seed: int = 0,
    tasks: list[str] | None = None,
) -> Iterator[dict]:
    """Schema-valid synthetic rows at any size, with an ``id`` and a ``caption_dependent`` flag.

    Args:
        train_per_task: Training rows per task (MMECInstruct: 8,000).
        eval_per_task: Rows per task in val, test IND and test OOD (MMECInstruct: 1,000).
        caption_dependent_share: Share of rows whose label is only inferable from the caption.
        seed: Random seed; the same arguments give the same rows.
        tasks: Task codes (default: all seven).
    """
    rng = random.Random(seed)
    counts = {"train": train_per_task, "val": eval_per_task, "test_ind": eval_per_task,
              "test_ood": eval_per_task}  # fmt: skip
    for task in tasks or list(TASKS):
        for split, n in counts.items():
            if n <= 0 or (split == "test_ood" and not TASKS[task].has_ood):
                continue
            n_cap = round(n * caption_dependent_share)
            modes = ["caption"] * n_cap + ["text"] * (n - n_cap)
            rng.shuffle(modes)
            for i, (row, mode) in enumerate(
                zip(_build(task, split, n, rng, modes), modes, strict=True)
            ):
                row["id"] = f"syn-{task}-{split}-{i}"
                row["caption_dependent"] = mode == "caption"
                yield row


def row_votes(row: dict, row_id: str, rng: random.Random, voters: list[str]) -> Iterator[dict]:
    """Votes of ``voters`` on each caption of a row, as vote-cache entries.

    A caption carrying a label cue (synthetic caption-dependent rows) is judged useful; on other
    rows usefulness is drawn with the paper's overall MV usage (about 55%). Each voter agrees with
    that judgement 85% of the time, so majorities are stable while single voters disagree.
    """
    captions = json.loads(row["caption_info"])
    for j, cap in enumerate(captions):
        cue = row.get("caption_dependent")
        useful = True if cue else (False if cue is False else rng.random() < 0.55)
        for v in voters:
            agree = rng.random() < 0.85
            says_yes = useful == agree
            p_yes = round(0.5 + (0.45 if says_yes else -0.45) * rng.random(), 4)
            yield {"row_id": row_id, "image_index": j, "voter": v, "caption_sha": text_hash(cap),
                   "vote": "yes" if says_yes else "no", "p_yes": p_yes, "template": "sample"}  # fmt: skip


def write_votes(
    rows: list[dict], folder: Path, seed: int = 11, voters: list[str] | None = None
) -> None:
    """Write a vote cache for ``rows`` (one shard per voter)."""
    rng = random.Random(seed)
    cache = VoteCache(folder)
    writers = {v: cache.writer(v) for v in voters or PAPER_VOTERS}
    try:
        for row in rows:
            rid = str(row["id"]) if "id" in row else content_id(row)
            for entry in row_votes(row, rid, rng, list(writers)):
                entry["ts"] = 0.0  # reproducible files
                writers[entry["voter"]].write(entry)
    finally:
        for w in writers.values():
            w.close()


def write_images(folder: Path) -> None:
    """One small PNG per catalogue product (its colour, with a simple silhouette)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for p in TOOLS + SPORTS:
        img = Image.new("RGB", (32, 32), (250, 250, 250))
        draw = ImageDraw.Draw(img)
        if p.pid.startswith("t"):
            draw.rectangle((6, 10, 26, 22), fill=p.color, outline=(20, 20, 20))
        else:
            draw.ellipse((6, 6, 26, 26), fill=p.color, outline=(20, 20, 20))
        img.save(folder / f"{p.pid}.png", optimize=True)


def _write_rows(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def write_shipped(out: Path) -> None:
    """(Re)create the shipped sample folder: rows.jsonl, images/, votes/."""
    rows = shipped_rows()
    _write_rows(rows, out / "rows.jsonl")
    write_images(out / "images")
    shutil.rmtree(out / "votes", ignore_errors=True)
    write_votes(rows, out / "votes")
    _stable_shard_names(out / "votes")


def _stable_shard_names(folder: Path) -> None:
    for voter_dir in folder.iterdir():
        for i, shard in enumerate(sorted(voter_dir.glob("*.jsonl"))):
            shard.rename(voter_dir / f"sample-{i}.jsonl")


def write_synthetic(out: Path, **kwargs: Any) -> int:
    """Write synthetic rows (rows.jsonl) and their votes (votes/) under ``out``; returns the count."""
    rows = list(synthetic_rows(**kwargs))
    _write_rows(rows, out / "rows.jsonl")
    write_votes(rows, out / "votes")
    return len(rows)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``shipped OUT`` or ``synthetic OUT [--train-per-task N ...]``."""
    parser = argparse.ArgumentParser(prog="python -m caslie.data.sample")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("shipped").add_argument("out", type=Path)
    syn = sub.add_parser("synthetic")
    syn.add_argument("out", type=Path)
    syn.add_argument("--train-per-task", type=int, default=8000)
    syn.add_argument("--eval-per-task", type=int, default=1000)
    syn.add_argument("--caption-dependent-share", type=float, default=0.5)
    syn.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "shipped":
        write_shipped(args.out)
        print(f"wrote the sample to {args.out}")
    else:
        n = write_synthetic(args.out, train_per_task=args.train_per_task,
                            eval_per_task=args.eval_per_task,
                            caption_dependent_share=args.caption_dependent_share, seed=args.seed)  # fmt: skip
        print(f"wrote {n} synthetic rows to {args.out}")


if __name__ == "__main__":
    main()

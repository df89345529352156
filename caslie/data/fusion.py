"""Caption fusion: put the captions that the strategy keeps into the item text.

Byte-compatible with the released CASLIE models (DESIGN.md):

* sr: history item ``input[j]`` and option ``options[j]`` get ``" " + caption`` appended when kept
  (captions index the history items first, then the options);
* prp: ``input["product 1 information extracted from image"]`` and ``"product 2 ..."`` hold the
  caption or ``null``;
* other tasks: ``input["product information extracted from image"]`` holds the caption or ``null``;
* ``input`` and ``options`` are re-serialised with ``json.dumps`` (Python defaults), fused or not.

Strategies: ``none`` (text only), ``uia`` (use it always), ``mv`` (majority of the configured voters),
``single:<voter>`` (one voter decides).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from caslie.config import DataConfig
from caslie.data.advice import fill_command
from caslie.data.cache import text_hash
from caslie.data.captions import CaptionSource, usable_caption
from caslie.data.votes import decide, open_votes
from caslie.errors import CoverageError
from caslie.record import Record
from caslie.tasks import TASK_CODES

log = logging.getLogger(__name__)

SINGLE_KEY = "product information extracted from image"
PRP_KEYS = (
    "product 1 information extracted from image",
    "product 2 information extracted from image",
)


@dataclass(frozen=True)
class FusedExample:
    """A record with its captions decided and its text fused.

    Attributes:
        record: The source record.
        input_text: ``json.dumps`` of the fused input.
        options_text: ``json.dumps`` of the fused options, or ``None`` when the row has none.
        captions: Caption per image slot (``None`` where there is none).
        used: Whether each slot's caption went into the text.
        votes: Per slot, each voter's vote (empty under ``none``/``uia``).
    """

    record: Record
    input_text: str
    options_text: str | None
    captions: tuple[str | None, ...]
    used: tuple[bool, ...]
    votes: tuple[dict[str, str], ...]


@dataclass
class FusionReport:
    """Caption usage per (task, split), and rows dropped for missing captions."""

    slots: Counter = field(default_factory=Counter)
    used: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    captioned: Counter = field(default_factory=Counter)
    """Image slots with a caption, per (task, split)."""
    stale: int = 0
    """Cached captions left out because the row's image changed since they were made."""

    def coverage(self) -> dict[str, float]:
        """``{split: share of image slots with a caption}`` (splits with images only)."""
        slots, captioned = Counter(), Counter()
        for (_, split), n in self.slots.items():
            slots[split] += n
        for (_, split), n in self.captioned.items():
            captioned[split] += n
        return {s: captioned[s] / n for s, n in sorted(slots.items()) if n}

    def used_pct(self) -> dict[str, dict[str, float]]:
        """``{split: {task: caption used %}}`` over image slots."""
        out: dict[str, dict[str, float]] = {}
        for (task, split), n in sorted(self.slots.items()):
            out.setdefault(split, {})[task] = (
                round(100.0 * self.used[(task, split)] / n, 1) if n else 0.0
            )
        return out

    def table(self) -> str:
        """Caption used % as a small text table (rows: splits, columns: tasks)."""
        pct = self.used_pct()
        tasks = sorted({t for split in pct.values() for t in split}, key=_task_order)
        lines = ["caption used %  " + " ".join(f"{t:>6}" for t in tasks)]
        for split, row in pct.items():
            lines.append(
                f"{split:<15} " + " ".join(f"{row.get(t, float('nan')):>6.1f}" for t in tasks)
            )
        return "\n".join(lines)


def _task_order(code: str) -> int:
    return TASK_CODES.index(code)


def fuse_text(
    record: Record, captions: Sequence[str | None], used: Sequence[bool]
) -> tuple[str, str | None]:
    """Serialise a record's input and options with the kept captions fused in.

    Args:
        record: The row.
        captions: Caption per image slot.
        used: Whether each slot's caption is kept; ``None`` for text-only (no keys added).

    Returns:
        ``(input_text, options_text)``; ``options_text`` is ``None`` for rows without options.
    """
    options = list(record.options) if record.options is not None else None
    if record.task == "sr":
        inp = list(record.input)
        n = len(inp)
        for j in range(n):
            if used[j]:
                inp[j] = inp[j] + " " + captions[j]
        for j in range(len(options or [])):
            if used[n + j]:
                options[j] = options[j] + " " + captions[n + j]  # type: ignore[index]
    else:
        inp = dict(record.input)
        keys = PRP_KEYS if record.task == "prp" else (SINGLE_KEY,)
        for j, key in enumerate(keys):
            inp[key] = captions[j] if used[j] else None
    return json.dumps(inp), _options_text(record, options)


def text_only(record: Record) -> tuple[str, str | None]:
    """Input and options re-serialised without any caption (the ``none`` strategy)."""
    options = list(record.options) if record.options is not None else None
    return json.dumps(record.input), _options_text(record, options)


def _options_text(record: Record, options: list[str] | None) -> str | None:
    """``json.dumps`` of the options; ``null`` for a row whose options field reads ``null``; ``None``
    (no options block) for a row without options."""
    if options is not None:
        return json.dumps(options)
    return "null" if record.null_options else None


def fuse_records(
    records: Sequence[Record], cfg: DataConfig
) -> tuple[list[FusedExample], FusionReport]:
    """Apply ``cfg.fusion`` to every record.

    Captions that are missing or failed are never fused. Under ``mv``/``single`` every caption
    the run needs must have a vote from every voter that decides.

    Raises:
        CoverageError: votes missing, naming how many, for which voters, and the command that
            produces them; or a row without ``caption_info`` under ``on_error=raise``.
    """
    report = FusionReport()
    kind = cfg.fusion_kind
    if kind == "none":
        out = []
        for r in records:
            n = len(r.images)
            report.slots[(r.task, r.split)] += n
            inp, opts = text_only(r)
            out.append(FusedExample(r, inp, opts, (None,) * n, (False,) * n, ({},) * n))
        return out, report

    captions = CaptionSource(cfg)
    voters = cfg.fusion_voters
    tables = open_votes(cfg, voters) if voters else None
    missing: Counter = Counter()
    missing_examples: list[str] = []
    out = []
    for r in records:
        caps = captions.get(r)
        if caps is None:
            if cfg.on_error == "raise":
                raise CoverageError(
                    f"{r.location}: row {r.id}: field 'caption_info': missing, but data.fusion="
                    f"{cfg.fusion} reads captions from the dataset; caption the rows with `caslie "
                    f"caption` and set data.captions, or use data.on_error=skip"
                )
            report.skipped["caption_info missing"] += 1
            continue
        used, votes = [], []
        for j, cap in enumerate(caps):
            slot_votes: dict[str, str] = {}
            usable = usable_caption(cap, cfg.na_captions)
            if tables is not None and usable:
                key = (r.id, j, text_hash(cap))
                slot_votes = tables.votes(key)
                for v in tables.missing(key):
                    missing[v] += 1
                    if len(missing_examples) < 3 and f"{r.id}[{j}]" not in missing_examples:
                        missing_examples.append(f"{r.id}[{j}]")
            keep = usable and (
                kind == "uia"
                or (
                    len(slot_votes) == len(voters)
                    and decide(slot_votes, voters, cfg.mv_tie, cfg.mv_rule)
                )
            )
            used.append(keep)
            votes.append(slot_votes)
        report.slots[(r.task, r.split)] += len(caps)
        report.captioned[(r.task, r.split)] += sum(c is not None for c in caps)
        report.used[(r.task, r.split)] += sum(used)
        inp, opts = fuse_text(r, caps, used)
        out.append(FusedExample(r, inp, opts, tuple(caps), tuple(used), tuple(votes)))
    report.stale = captions.stale
    _check_coverage(report, cfg, captions)
    if missing:
        per_voter = ", ".join(f"{v}: {n}" for v, n in sorted(missing.items()))
        raise CoverageError(
            f"data.fusion={cfg.fusion} needs a vote from every voter on every caption, but votes "
            f"are missing in {cfg.votes} ({per_voter} captions; e.g. {', '.join(missing_examples)}). "
            f"Produce them with: {fill_command(cfg, 'vote')}"
        )
    return out, report


def _check_coverage(report: FusionReport, cfg: DataConfig, captions: CaptionSource) -> None:
    """Log the image slots without a caption; refuse a split below ``data.min_caption_coverage``.

    Raises:
        CoverageError: naming the split, its coverage and the command that fills the gap.
    """
    coverage = report.coverage()
    if report.stale:
        log.warning("%d cached caption(s) were made from an image that has changed since: "
                    "left out (caslie caption makes them again)", report.stale)  # fmt: skip
    for split, share in coverage.items():
        if share < 1.0:
            log.warning("%s: %.1f%% of image slots have a caption", split, 100 * share)
    low = {s: share for s, share in coverage.items() if share < cfg.min_caption_coverage}
    if not low:
        return
    where = f"caption cache {cfg.captions}" if captions.folder else "the rows' caption_info"
    worst = ", ".join(f"{s} {100 * v:.1f}%" for s, v in low.items())
    fill = (f"fill it with: {fill_command(cfg, 'caption', captions.model)}" if captions.folder
            else "caption the rows with `caslie caption` and set data.captions to its folder")  # fmt: skip
    raise CoverageError(
        f"data.fusion={cfg.fusion}: too few images have a caption in {where} ({worst}; "
        f"data.min_caption_coverage={cfg.min_caption_coverage:g}"
        + (f"; {report.stale} made from images changed since" if report.stale else "")
        + f"); lower data.min_caption_coverage to train anyway, or {fill}"
    )

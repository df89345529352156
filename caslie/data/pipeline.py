"""Rows -> fused prompts -> tokenised Arrow datasets, cached by everything that changes them.

The first build loads and validates rows, fuses captions, renders prompts and tokenises them in
batches (fast tokenizer, one encoding per example); the result is saved as Arrow under
``<data.cache_dir>/tokenised/<fingerprint>`` with a manifest of counts. The fingerprint covers the
data config, the state of the source files and caches, the tokenizer and this module's format
version, so a second build with the same inputs only memory-maps the saved files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.table import InMemoryTable

from caslie.config import DataConfig
from caslie.data.cache import folder_state
from caslie.data.fusion import FusedExample, fuse_records
from caslie.data.records import load_records
from caslie.data.sources import resolve_source
from caslie.data.tokenize import (
    Tokenise,
    control_strings,
    holds_control_text,
    prompt_parts,
    split_prompt,
)
from caslie.errors import DataError
from caslie.prompts import render_prompt, template_adds_bos

log = logging.getLogger(__name__)

FORMAT_VERSION = 5
"""Bump when the built columns or their meaning change (invalidates old caches)."""


@dataclass
class BuiltData:
    """Tokenised splits and what the build counted.

    Attributes:
        splits: ``{split: datasets.Dataset}`` with columns ``id``, ``task``, ``split``, ``prompt``,
            ``target``, ``input_ids``, ``prompt_len``, ``length``, ``trimmed``, ``captions``,
            ``caption_used``, ``votes``, ``images``.
        manifest: Counts: rows per task and split, skipped rows, trimmed and too-long examples,
            caption used % per split and task, build time.
        path: The cache folder.
        from_cache: Whether this call reused a previous build.
        stats: Seconds spent per step of this call: a build's ``load_s`` (read and validate
            rows), ``fuse_s`` (captions and votes), ``render_s`` (prompts), ``tokenise_s`` and
            ``save_s`` (split and write Arrow); a cache hit's ``load_s``.
    """

    splits: dict[str, datasets.Dataset]
    manifest: dict[str, Any]
    path: Path
    from_cache: bool = False
    stats: dict[str, float] = field(default_factory=dict)


def _source_state(source: str) -> Any:
    kind, where = resolve_source(source)
    if kind == "hub":
        return ["hub", str(where)]
    path = Path(where)
    files = [path] if kind == "file" else sorted(p for p in path.iterdir() if p.is_file())
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Hash of the tokenizer's vocabulary, rules, special tokens and chat template."""
    h = hashlib.blake2b(digest_size=8)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(
        backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode()
    )
    specials = [
        tokenizer.bos_token,
        tokenizer.eos_token,
        tokenizer.pad_token,
        tokenizer.chat_template,
    ]
    h.update(json.dumps(specials, default=str).encode())
    return h.hexdigest()


UNRELATED_FIELDS = ("num_workers", "group_by_length", "packing", "pad_to_multiple_of", "cache_dir",
                    "image_root", "image_size", "allow_private_urls", "min_caption_coverage",
                    "allow_changed")  # fmt: skip
"""``data.*`` keys that do not change the tokenised examples."""

PART_NAMES = {"config": "the data.* settings", "source": "the rows (data.source)",
              "captions": "the caption cache", "votes": "the vote cache",
              "tokenizer": "the tokenizer", "splits": "the splits", "context_length": "the context length"}  # fmt: skip
"""What each fingerprint part covers, in messages."""


def _short_hash(value: Any) -> str:
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=8).hexdigest()


def fingerprint_parts(cfg: DataConfig, tokenizer: Any, splits: list[str],
                      context_length: int | None = None) -> dict[str, str]:  # fmt: skip
    """A hash per input that changes the tokenised output (see :data:`PART_NAMES`); checkpoints
    keep them so a resume can say which input changed."""
    fields = asdict(cfg)
    for unrelated in UNRELATED_FIELDS:
        fields.pop(unrelated)
    state = {
        "config": [FORMAT_VERSION, fields],
        "splits": sorted(splits),
        "source": _source_state(cfg.source),
        "captions": folder_state(cfg.caption_cache) if cfg.caption_cache else None,
        "votes": {v: folder_state(Path(cfg.votes) / v) for v in cfg.fusion_voters}
        if cfg.votes
        else None,
        "tokenizer": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
        "context_length": context_length,
    }
    return {name: _short_hash(value) for name, value in state.items()}


def changed_parts(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between two :func:`fingerprint_parts`, in words."""
    return [
        PART_NAMES.get(k, k) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)
    ]


def _columns(examples: list[FusedExample], cfg: DataConfig, tokenizer: Any) -> dict[str, list]:
    cols: dict[str, list] = {k: [] for k in ("id", "task", "split", "head", "input_text", "tail", "target",
                                             "parts", "options", "captions", "caption_used", "votes", "images")}  # fmt: skip
    controls = control_strings(tokenizer)
    render = partial(render_prompt, template=cfg.prompt_template, tokenizer=tokenizer)
    for ex in examples:
        r = ex.record
        head, tail = split_prompt(partial(render, r.instruction, options_text=ex.options_text))
        parts = ""  # a row whose text holds a control string is tokenised by parts (tokenize.py)
        if holds_control_text([r.instruction, ex.input_text, ex.options_text, r.output], controls):
            parts = json.dumps(prompt_parts(render, r.instruction, ex.options_text))
        cols["parts"].append(parts)
        cols["id"].append(r.id)
        cols["task"].append(r.task)
        cols["split"].append(r.split)
        cols["head"].append(head)
        cols["input_text"].append(ex.input_text)
        cols["tail"].append(tail)
        cols["target"].append(r.output)
        cols["options"].append(json.dumps(list(r.options) if r.options is not None else None))
        cols["captions"].append(json.dumps(list(ex.captions)))
        cols["caption_used"].append(list(ex.used))
        cols["votes"].append(json.dumps(list(ex.votes)))
        cols["images"].append(json.dumps(list(r.images)))
    return cols


def build_dataset(cfg: DataConfig, tokenizer: Any, splits: list[str] | None = None,
                  context_length: int | None = None) -> BuiltData:  # fmt: skip
    """Build (or reuse) the tokenised datasets for ``splits`` (default: train + eval splits).

    Training examples longer than ``data.max_length`` are trimmed inside their input (the count per
    task and split is in the manifest); evaluation examples are never trimmed, and one longer than
    ``context_length`` (the model's context) is skipped and counted.

    Raises:
        DataError: invalid rows (``on_error=raise``), missing votes, or a training example that
            cannot fit ``max_length`` even trimmed under ``on_error=raise``.
    """
    splits = splits or [cfg.train_split, *cfg.eval_splits]
    parts = fingerprint_parts(cfg, tokenizer, splits, context_length)
    key = _short_hash(parts)
    path = Path(cfg.cache_dir) / "tokenised" / key
    if (path / "manifest.json").is_file():
        start = time.perf_counter()
        reused = _load_built(path)
        if reused is not None:
            return BuiltData(*reused, path, True, {"load_s": time.perf_counter() - start})

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    records, load_report = load_records(cfg, splits=splits)
    timings["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fused, fusion_report = fuse_records(records, cfg)
    timings["fuse_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    cols = _columns(fused, cfg, tokenizer)
    timings["render_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tokenise = Tokenise(
        tokenizer, cfg.max_length, template_adds_bos(cfg.prompt_template), context_length
    )
    cols = tokenise_columns(tokenise, cols)
    task_col, split_col, keep_col, trimmed_col = (
        cols[c] for c in ("task", "split", "keep", "trimmed")
    )
    dropped = [i for i, keep in enumerate(keep_col) if not keep]
    too_long = Counter(f"{task_col[i]}/{split_col[i]}" for i in dropped)
    train_drops = [i for i in dropped if split_col[i] == cfg.train_split]
    if train_drops:
        first = train_drops[0]
        message = (
            f"{len(train_drops)} training example(s) do not fit data.max_length={cfg.max_length} "
            f"even trimmed (first: row {cols['id'][first]}, task {task_col[first]}); "
            "raise data.max_length"
        )
        if cfg.on_error == "raise":
            raise DataError(message)
        log.warning("%s; skipping them (data.on_error=skip)", message)
    if len(dropped) > len(train_drops):
        log.warning(
            "skipping %d evaluation example(s) longer than the model's context of %s tokens "
            "(evaluation prompts are never trimmed): %s",
            len(dropped) - len(train_drops), context_length, dict(too_long),
        )  # fmt: skip
    timings["tokenise_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    by_split = {s: _split_dataset(cols, s, key) for s in splits}
    by_split = {s: d for s, d in by_split.items() if d is not None}
    manifest = {
        "fingerprint": key,
        "fingerprint_parts": parts,
        "source": cfg.source,
        "fusion": cfg.fusion,
        "splits": sorted(by_split),
        "rows": {f"{t}/{s}": n for (t, s), n in sorted(load_report.kept.items())},
        "rows_read": load_report.rows_read,
        "skipped_invalid": dict(load_report.skipped),
        "skipped_no_captions": dict(fusion_report.skipped),
        "duplicate_ids": load_report.duplicate_ids,
        "skipped_rows": load_report.skipped_rows,
        "trimmed": dict(Counter(f"{t}/{s}" for t, s, tr in zip(task_col, split_col, trimmed_col, strict=True) if tr)),
        "too_long_dropped": len(dropped),
        "skipped_too_long": dict(sorted(too_long.items())),
        "caption_used_pct": fusion_report.used_pct(),
        "timings": timings,
    }  # fmt: skip
    _save(by_split, manifest, path)
    # The saved manifest keeps the steps before saving; this call's stats add the save itself.
    stats = timings | {"save_s": time.perf_counter() - t0}
    return BuiltData(by_split, manifest, path, False, stats)


def tokenise_columns(tokenise: Tokenise, cols: dict[str, list], batch_size: int = 1000
                     ) -> dict[str, list]:  # fmt: skip
    """The rendered columns with the prompt parts replaced by :class:`Tokenise`'s outputs.

    Tokenised in batches of plain lists, before anything becomes Arrow: a ``datasets.map`` would
    first write the long prompt parts to Arrow only to read them back, and hash the tokenizer to
    fingerprint the function, seconds of a 56k-row build.
    """
    n = len(cols["id"])
    out: dict[str, list] = {}
    for start in range(0, n, batch_size):
        batch = {k: v[start : start + batch_size] for k, v in cols.items()}
        for k, v in tokenise(batch).items():
            out.setdefault(k, []).extend(v)
    kept = {k: v for k, v in cols.items() if k not in _PROMPT_PARTS}
    return kept | out


_PROMPT_PARTS = ("head", "input_text", "tail", "parts")


def _split_dataset(cols: dict[str, list], split: str, fingerprint: str) -> datasets.Dataset | None:
    """The kept examples of one split as a Dataset (``None`` when it has none).

    Built from an Arrow table with the build's fingerprint: ``Dataset.from_dict`` would convert
    each column through its own typed sequence and then hash the whole table for a fingerprint.
    """
    rows = [i for i, (sp, keep) in enumerate(zip(cols["split"], cols["keep"], strict=True))
            if keep and sp == split]  # fmt: skip
    if not rows:
        return None
    table = pa.table(
        {
            k: [v[i] for i in rows] if len(rows) < len(v) else v
            for k, v in cols.items()
            if k != "keep"
        }
    )
    return datasets.Dataset(InMemoryTable(table), fingerprint=f"{fingerprint}-{split}")


def _file_hashes(folder: Path) -> dict[str, str]:
    """Content hash of every file of a saved build but its manifest."""
    return {
        str(p.relative_to(folder)): hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _load_built(path: Path) -> tuple[dict[str, datasets.Dataset], dict[str, Any]] | None:
    """A saved build, or ``None`` (with a warning, the folder removed) when any of its files is
    unreadable: a damaged cache is rebuilt, never trusted and never a dead end."""
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        if _file_hashes(path) != manifest.pop("files"):
            raise ValueError("its files differ from those it was saved with")
        splits = {s: datasets.load_from_disk(str(path / s)) for s in manifest["splits"]}
        return splits, manifest
    except Exception as err:  # Arrow, JSON and OS errors alike mean the same: rebuild
        log.warning("the tokenised cache %s is damaged (%s: %s); rebuilding it",
                    path, type(err).__name__, str(err).splitlines()[0] if str(err) else "")  # fmt: skip
        shutil.rmtree(path, ignore_errors=True)
        return None


class _quiet_datasets:
    """Silence ``datasets`` progress bars inside a block."""

    def __enter__(self) -> None:
        self.was = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        if self.was:
            datasets.utils.logging.enable_progress_bar()


def _save(by_split: dict[str, datasets.Dataset], manifest: dict, path: Path) -> None:
    """Write to a temporary folder and rename, so a killed build never leaves a half cache."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=path.parent))
    try:
        with _quiet_datasets():
            for split, ds in by_split.items():
                ds.save_to_disk(str(tmp / split))
        # The file hashes are checked at every reuse: Arrow files carry no checksum.
        saved = manifest | {"files": _file_hashes(tmp)}
        (tmp / "manifest.json").write_text(json.dumps(saved, indent=2))
        with contextlib.suppress(OSError):  # a concurrent build of the same key finished first
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Re-open from the final location so the returned datasets do not point at the temp folder.
    for split in list(by_split):
        by_split[split] = datasets.load_from_disk(str(path / split))

"""EC3 captioning (``caslie caption``): context-conditioned captions of product images into a cache.

Backends load through transformers' ``AutoProcessor`` and ``AutoModelForImageTextToText`` and use
the processor's chat template: Llama-3.2-Vision (``mllama``, the paper's default), LLaVA-1.5
(``llava``), LLaVA-NeXT (``llava_next``); BLIP-2 (``blip-2``) captions without any prompt, the
paper's context-free baseline. Prompts come from Appendix C, one per product image. Generation is
greedy and batched with left padding. An image that cannot be had is recorded as the caption "NA"
with its reason, and the run goes on; ``--retry-failed`` tries those again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from caslie.config import CaptionConfig, Config
from caslie.data.cache import CaptionCache, image_state, same_image, text_hash
from caslie.data.captions import NA_CAPTION
from caslie.data.sources import default_image_root
from caslie.errors import CaslieError, ConfigError
from caslie.images import ImageError, ImageLimits, decode_image, read_image_bytes
from caslie.jobs import JobSummary, local_device, my_share, progress, rank_world, select_records
from caslie.pretrained import (
    Checkpoint,
    load_model,
    load_processor,
    model_config,
    pad_for_generation,
)
from caslie.prompts import (
    CONTEXT_FREE_PROMPT,
    REFERENCE_CAPTION,
    REFERENCE_CAPTION_LEAD,
    caption_instruction,
)
from caslie.record import Record
from caslie.tasks import TASKS

log = logging.getLogger(__name__)
T = TypeVar("T")

NESTED_IMAGES = {"mllama"}  # processors that take one list of images per prompt
NO_PROMPT = {"blip-2"}  # captions from the image alone
SIZED_IMAGES = {"mllama", "llava_next"}  # image tokens (tiles, grid cells) follow the image's shape

WINDOW_BATCHES = 4
"""Batches fetched at once and sorted by image size and prompt length before they are cut."""


@dataclass(frozen=True)
class CaptionJob:
    """One image slot to caption."""

    record: Record
    index: int
    instruction: str
    template: str


def backend_of(cfg: CaptionConfig) -> str:
    """The captioner's model type (``mllama``, ``llava``...), read from its config (no weights)."""
    return model_config(Checkpoint.from_config(cfg, cfg.model, what="captioning model")).model_type


def instruction_for(
    record: Record, index: int, cfg: CaptionConfig, backend: str | None = None
) -> str:
    """The captioning instruction for one image slot, as ``caption.prompts``, ``caption.context``
    and ``caption.length_instruction`` set it (``backend`` picks the reference's lead sentence)."""
    return caption_instruction(
        record, index, cfg.context, cfg.length_instruction, cfg.prompts, backend
    )


def template_key(task: str, cfg: CaptionConfig, backend: str | None = None) -> str:
    """Hash of what shapes a task's prompts; a cached caption counts only under the same key."""
    if cfg.prompts == "reference" and cfg.context:
        lead = REFERENCE_CAPTION_LEAD.get(backend or "", REFERENCE_CAPTION_LEAD["mllama"])
        return text_hash(f"reference|{lead}|{REFERENCE_CAPTION[task]}|{cfg.max_new_tokens}")
    base = TASKS[task].caption_template if cfg.context else CONTEXT_FREE_PROMPT
    return text_hash(f"{base}|{cfg.length_instruction}|{cfg.max_new_tokens}")


def clean_caption(text: str) -> str:
    """Collapse whitespace, drop wrapping quotes and a leading ``Caption:`` label."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"^(?:caption|answer)\s*:\s*", "", text, flags=re.IGNORECASE)
    return text.strip().strip('"“”').strip()


def clean_reference(text: str, backend: str) -> str:
    """The reference's clean-up: newlines and tabs become spaces, the ends are stripped (LLaVA-NeXT's
    double quotes too), and a caption under two characters becomes "NA"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    if backend == "llava_next":
        text = text.strip('"')
    return text if len(text) >= 2 else NA_CAPTION


class Captioner:
    """A VLM with its processor, captioning batches of images.

    Args:
        cfg: The caption config.
        device: Where the model runs.
    """

    def __init__(self, cfg: CaptionConfig, device: str = "cpu"):
        from transformers import AutoModelForImageTextToText

        ckpt = Checkpoint.from_config(cfg, cfg.model, what="captioning model")
        self.cfg, self.device = cfg, device
        self.processor = load_processor(ckpt)
        self.model = load_model(ckpt, AutoModelForImageTextToText).to(device).eval()
        self.kind = self.model.config.model_type
        self.tokenizer = self.processor.tokenizer
        pad_for_generation(self.tokenizer)
        self.tokenizer_lock = threading.Lock()

    @property
    def raw_format(self) -> bool:
        """The reference prompts LLaVA-1.5 as ``USER: <image>\\n... ASSISTANT:``, not by its chat
        template."""
        return self.cfg.prompts == "reference" and self.kind == "llava"

    def prompt(self, instruction: str) -> str:
        """The prompt around one image and the instruction, as the model receives it."""
        return render_caption_prompt(self.processor, self.kind, instruction, self.raw_format)

    def clean(self, text: str) -> str:
        """A generated caption cleaned as ``caption.prompts`` says."""
        if self.cfg.prompts == "reference":
            return clean_reference(text, self.kind)
        return clean_caption(text)

    def prepare(self, images: list, instructions: list[str]) -> dict[str, torch.Tensor]:
        """The processor's batch (CPU tensors) for images and their instructions: the image
        preprocessing and tokenisation, which :func:`caption_ahead` runs while the model works."""
        texts = [self.prompt(i) for i in instructions]
        imgs: list = [[im] for im in images] if self.kind in NESTED_IMAGES else images
        # A fast tokenizer object refuses concurrent calls ("Already borrowed").
        with self.tokenizer_lock:
            # Chat templates already hold BOS; the processor adds it to a raw prompt (or none).
            return dict(self.processor(images=imgs, text=texts, padding=True, return_tensors="pt",
                                       add_special_tokens=self.kind in NO_PROMPT or self.raw_format))  # fmt: skip

    @torch.inference_mode()
    def generate(self, batch: dict[str, torch.Tensor]) -> list[str]:
        """Greedy captions for a batch made by :meth:`prepare`."""
        enc = {k: v.to(self.device) for k, v in batch.items()}
        if "pixel_values" in enc:
            enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
        out = self.model.generate(**enc, max_new_tokens=self.cfg.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        new = out[:, enc["input_ids"].shape[1] :]
        with self.tokenizer_lock:
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [self.clean(t) for t in texts]

    def caption(self, images: list, instructions: list[str]) -> list[str]:
        """Greedy captions for a batch of images, one instruction each."""
        return self.generate(self.prepare(images, instructions))


def caption_ahead(captioner: Captioner, work: Iterable[tuple[T, list, list[str]]],
                  ahead: bool | None = None) -> Iterator[tuple[T, list[str]]]:  # fmt: skip
    """Captions of each ``(tag, images, instructions)`` of ``work``: ``(tag, captions)``.

    With ``ahead`` (default: when the model is not on the CPU), the next batch is prepared (images
    preprocessed, prompts tokenised) in a second thread while the model captions the current one.
    On the CPU that thread would take cores and the interpreter from the model's own work (it made
    the tiny LLaVA slower), so batches are prepared in turn. ``work`` is read in the caller's thread.
    """
    if not (captioner.device != "cpu" if ahead is None else ahead):
        for tag, images, instructions in work:
            yield tag, captioner.caption(images, instructions)
        return
    with ThreadPoolExecutor(1) as helper:
        pending: tuple[T, Future] | None = None
        for tag, images, instructions in work:
            future = helper.submit(captioner.prepare, images, instructions)
            if pending is not None:
                yield pending[0], captioner.generate(pending[1].result())
            pending = (tag, future)
        if pending is not None:
            yield pending[0], captioner.generate(pending[1].result())


def render_caption_prompt(processor: Any, backend: str, instruction: str, raw: bool = False) -> str:
    """The text a captioner receives around one image: nothing for BLIP-2, the raw LLaVA-1.5 format
    of the reference (``raw``), else the processor's chat template."""
    if backend in NO_PROMPT:
        return ""
    if raw:
        return f"USER: <image>\n{instruction} ASSISTANT:"
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}
    ]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def dry_run(cfg: Config, tasks: list[str] | None = None, splits: list[str] | None = None,
            limit: int | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The prompts ``caslie caption`` would send, one dict per (row, image), loading no weights.

    Each has ``id``, ``task``, ``split``, ``image_index``, ``image``, ``prompt`` (the instruction)
    and ``chat`` (the exact text the captioner receives, or ``None`` when its processor cannot be
    loaded here, e.g. a hub id offline).
    """
    cc = cfg.caption
    try:
        backend: str | None = backend_of(cc)
        processor = load_processor(Checkpoint.from_config(cc, cc.model, what="captioning model"))
    except CaslieError as err:
        log.warning("no chat text in the dry run: %s", err)
        backend, processor = None, None
    raw = cc.prompts == "reference" and backend == "llava"
    for r in select_records(cfg, tasks, splits, limit):
        for j in range(len(r.images)):
            prompt = instruction_for(r, j, cc, backend)
            chat = render_caption_prompt(processor, backend, prompt, raw) if processor else None
            yield {"id": r.id, "task": r.task, "split": r.split, "image_index": j,
                   "image": r.images[j], "prompt": prompt, "chat": chat}  # fmt: skip


def plan(records: list[Record], cfg: CaptionConfig, cached: dict, retry_failed: bool,
         rank: int = 0, world: int = 1, backend: str | None = None,
         root: Path | None = None) -> tuple[list[CaptionJob], int]:  # fmt: skip
    """This rank's image slots still to caption, and how many of its slots the cache already has.

    A cached caption counts when it was made with the same prompt template and, given the image
    ``root``, from the same image (reference and content); otherwise the slot is captioned again.
    Slots are dealt to ranks before the cache is consulted, so a rank owns the same slots whatever
    the others have written meanwhile.
    """
    jobs, skipped = [], 0
    slots = [(r, j) for r in records for j in range(len(r.images))]
    for r, j in my_share(slots, rank, world):
        template = template_key(r.task, cfg, backend)
        entry = cached.get((r.id, j))
        cached_here = (
            entry is not None
            and entry.get("template") == template
            and (root is None or same_image(entry, r.images[j], root))
        )
        if cached_here and (entry.get("status", "ok") == "ok" or not retry_failed):
            skipped += 1
            continue
        jobs.append(CaptionJob(r, j, instruction_for(r, j, cfg, backend), template))
    return jobs, skipped


def prefetched_batches(keys: list, size: int, fetch: Callable[[Any], Any],
                       order: Callable[[Any, Any], Any] | None = None,
                       window: int = WINDOW_BATCHES) -> Iterator[tuple[list, list]]:  # fmt: skip
    """Batches of ``keys`` with ``fetch`` applied to each (8 at a time).

    Keys are fetched ``window`` batches at a time, the next window while the caller works on the
    current one; ``order(key, fetched)`` sorts a window before it is cut into batches.
    """
    step = size * window
    with ThreadPoolExecutor(8) as fetchers, ThreadPoolExecutor(1) as ahead:

        def fetch_window(chunk: list) -> list:
            return list(zip(chunk, fetchers.map(fetch, chunk), strict=True))

        future = ahead.submit(fetch_window, keys[:step])
        for begin in range(0, len(keys), step):
            fetched = future.result()
            if begin + step < len(keys):
                future = ahead.submit(fetch_window, keys[begin + step : begin + 2 * step])
            if order is not None:
                fetched.sort(key=lambda pair: order(*pair))
            for at in range(0, len(fetched), size):
                part = fetched[at : at + size]
                yield [k for k, _ in part], [r for _, r in part]


def batch_order(backend: str) -> Callable[[tuple[str, str], Any], tuple]:
    """How a window of fetched images is sorted before it is cut into batches: images that could
    not be had first (they are recorded without a forward pass), then, for processors whose image
    tokens depend on the image's size (tiles, any-resolution grids), by size, then by prompt length
    (so a batch pads little). Every prompt holds one image, so batches agree in image count."""

    def order(key: tuple[str, str], fetched: Any) -> tuple:
        if isinstance(fetched, ImageError):
            return (0, (0, 0), 0)
        size = tuple(fetched.size) if backend in SIZED_IMAGES else (0, 0)
        return (1, size, len(key[1]))

    return order


def run_caption(cfg: Config, tasks: list[str] | None = None, splits: list[str] | None = None,
                limit: int | None = None, retry_failed: bool = False) -> JobSummary:  # fmt: skip
    """Caption every selected image slot not yet in ``data.captions`` (this rank's share).

    Raises:
        ConfigError: ``data.captions`` is not a cache folder.
    """
    if cfg.data.caption_cache is None:
        raise ConfigError(
            "caslie caption writes a caption cache: set data.captions to a folder (e.g. cache/captions)"
        )
    start = time.perf_counter()
    rank, world = rank_world()
    cc, root = cfg.caption, Path(cfg.data.image_root or default_image_root(cfg.data.source))
    limits = ImageLimits(
        cc.fetch_timeout_s, cc.fetch_retries, cc.max_image_bytes, cc.max_image_pixels,
        cc.image_size, allow_private=cfg.data.allow_private_urls,
    )  # fmt: skip
    cache = CaptionCache(cfg.data.caption_cache, cfg.data.on_error)
    cached = cache.load(model=cc.model) if cache.folder.is_dir() else {}
    records = select_records(cfg, tasks, splits, limit)
    jobs, skipped = plan(records, cc, cached, retry_failed, rank, world, backend_of(cc), root)
    summary = JobSummary("caption", total=len(jobs), skipped=skipped)
    if not jobs:
        summary.seconds = time.perf_counter() - start
        return summary
    captioner = Captioner(cc, local_device())
    # One generation per distinct (image, prompt): an SR product in many users' histories has the
    # same image and title, hence the same caption.
    groups: dict[tuple[str, str], list[CaptionJob]] = {}
    for job in jobs:
        groups.setdefault((job.record.images[job.index], job.instruction), []).append(job)

    states: dict[tuple[str, str], dict] = {}  # what identifies each image fetched, until written

    def fetch(key: tuple[str, str]) -> Any:
        try:
            data = read_image_bytes(key[0], root, limits)
            states[key] = image_state(key[0], root, data)
            return decode_image(data, limits, key[0])
        except ImageError as err:
            return err

    def record(key: tuple[str, str], caption: str, status: str, reason: str | None = None) -> None:
        for job in groups[key]:
            entry = _entry(job, cc.model, caption, status, reason)
            writer.write(entry | states.get(key, {}))
            if status == "ok":
                summary.done += 1
            else:
                summary.fail(reason or "")
        states.pop(key, None)
        bar.update(len(groups[key]))

    def to_caption() -> Iterator[tuple[list, list, list[str]]]:
        # Longest prompts first, so that a window (and then a batch) holds prompts of similar length.
        keys = sorted(groups, key=lambda k: len(k[1]), reverse=True)
        order = batch_order(captioner.kind)
        for batch, images in prefetched_batches(keys, cc.batch_size, fetch, order):
            ok = []
            for key, im in zip(batch, images, strict=True):
                if isinstance(im, ImageError):
                    record(key, NA_CAPTION, "failed", str(im))
                else:
                    ok.append(key)
            if ok:
                got = dict(zip(batch, images, strict=True))
                yield ok, [got[key] for key in ok], [key[1] for key in ok]

    bar = progress(len(jobs), f"captioning with {cc.model}", "image", log)
    with cache.writer(rank) as writer:
        for ok, texts in caption_ahead(captioner, to_caption()):
            for key, text in zip(ok, texts, strict=True):
                if text:
                    record(key, text, "ok")
                else:
                    record(key, NA_CAPTION, "failed", "empty caption")
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _entry(
    job: CaptionJob, model: str, caption: str, status: str, reason: str | None = None
) -> dict:
    return {"row_id": job.record.id, "image_index": job.index, "model": model, "template": job.template,
            "caption": caption, "status": status, "reason": reason, "task": job.record.task,
            "split": job.record.split, "image": job.record.images[job.index]}  # fmt: skip

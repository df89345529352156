"""Captions per record, from the rows' ``caption_info`` or from a caption cache (``data.captions``)."""

from __future__ import annotations

from pathlib import Path

from caslie.config import DataConfig
from caslie.data.cache import CaptionCache, same_image
from caslie.data.sources import default_image_root
from caslie.record import Record

NA_CAPTION = "NA"
"""The caption text of an image that could not be described."""


def usable_caption(caption: str | None, na_captions: str = "vote") -> bool:
    """Whether a caption can be judged and fused: present, not blank, and not "NA" under
    ``data.na_captions=drop``. Voting and fusion both ask this, so they always agree."""
    if caption is None or not caption.strip():
        return False
    return not (na_captions == "drop" and caption.strip() == NA_CAPTION)


class CaptionSource:
    """Captions per image slot of a record, as ``data.captions`` says where to find them.

    A cached caption counts only when it was made from the image the row names now (same
    reference, same file content); one of another image is *stale*: counted, never used.

    Args:
        cfg: The data config (``data.captions`` and ``data.caption_model``).
    """

    def __init__(self, cfg: DataConfig):
        self.folder = cfg.caption_cache
        self.root = Path(cfg.image_root or default_image_root(cfg.source))
        self.stale = 0
        self._cache: dict = {}
        self.model = cfg.caption_model
        """The captioning model read (the cache's only one when ``data.caption_model`` is unset)."""
        if self.folder is not None:
            cache = CaptionCache(self.folder, cfg.on_error)
            self._cache = cache.load(model=cfg.caption_model, must_hold=True)
            self.model = self.model or next((e["model"] for e in self._cache.values()), None)

    @property
    def from_dataset(self) -> bool:
        """Whether captions come from the rows' ``caption_info``."""
        return self.folder is None

    def get(self, record: Record) -> tuple[str | None, ...] | None:
        """Captions per image slot (``None`` where there is none or it failed), or ``None`` when
        captions come from the dataset and the row has no ``caption_info``."""
        if self.folder is None:
            return record.captions
        out = []
        for j, ref in enumerate(record.images):
            entry = self._cache.get((record.id, j))
            if entry is not None and not same_image(entry, ref, self.root):
                self.stale += 1
                entry = None
            ok = entry is not None and entry.get("status", "ok") == "ok"
            out.append(entry["caption"] if ok else None)
        return tuple(out)

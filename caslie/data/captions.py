"""Captions per record, from the rows' ``caption_info`` or from a caption cache (``data.captions``)."""

from __future__ import annotations

from caslie.config import DataConfig
from caslie.data.cache import CaptionCache
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

    Args:
        cfg: The data config (``data.captions`` and ``data.caption_model``).
    """

    def __init__(self, cfg: DataConfig):
        self.folder = cfg.caption_cache
        self._cache: dict = {}
        if self.folder is not None:
            self._cache = CaptionCache(self.folder).load(model=cfg.caption_model)

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
        for j in range(len(record.images)):
            entry = self._cache.get((record.id, j))
            ok = entry is not None and entry.get("status", "ok") == "ok"
            out.append(entry["caption"] if ok else None)
        return tuple(out)

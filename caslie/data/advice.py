"""The command that fills a gap in the caption or vote cache, printed so that it works when pasted.

It repeats the config files the run was loaded from and then names, with their values, every key
that decides which captions or votes are made: the rows, the image root, the caption cache and its
model, the vote cache, the voters and how NA captions are treated.
"""

from __future__ import annotations

import shlex

from caslie.config import DataConfig


def _value(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return "null" if value is None else str(value)


def fill_command(cfg: DataConfig, command: str, caption_model: str | None = None) -> str:
    """``caslie caption`` or ``caslie vote`` with everything that makes it fill this run's gap.

    Args:
        cfg: The run's data config.
        command: ``caption`` or ``vote``.
        caption_model: The captioning model to name (``caslie caption`` writes ``caption.model``).
    """
    files = getattr(cfg, "loaded_from", [])
    keys = {"data.source": cfg.source, "data.image_root": cfg.image_root,
            "data.tasks": cfg.tasks, "data.captions": cfg.captions}  # fmt: skip
    if command == "caption":
        if caption_model or cfg.caption_model:
            keys["caption.model"] = caption_model or cfg.caption_model
    else:
        if cfg.caption_cache is not None:
            keys["data.caption_model"] = cfg.caption_model
        keys |= {"data.votes": cfg.votes, "data.voters": cfg.fusion_voters or cfg.voters,
                 "data.na_captions": cfg.na_captions}  # fmt: skip
    words = ["caslie", command] + [w for f in files for w in ("--config", f)]
    words += [f"{k}={_value(v)}" for k, v in keys.items() if v is not None]
    return shlex.join(words)

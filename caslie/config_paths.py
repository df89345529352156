"""Where a relative path in a config points: one rule for every path key.

A relative path written in a config file (or one of its ``base:`` files), or left at its default,
resolves against the repository root, the folder that holds ``train.py`` and ``configs/``: a config
means the same files whichever directory the command runs from. A relative path typed on the
command line (an override) resolves against the current directory, as any shell argument does.
``base:`` entries name config files and resolve against the file that lists them.

Loaded configs hold absolute paths, so error messages name the file that was looked for and a
run's saved ``config.yaml`` points at the same files from anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository the package runs from (``pip install -e .``)."""

OVERRIDE = "command line"
"""The source of a value that a command-line override set."""

ALWAYS_PATHS = {
    "run.output_dir": (),
    "data.image_root": (),
    "data.captions": ("dataset",),
    "data.votes": (),
    "data.cache_dir": (),
    "trainer.ckpt_path": ("last",),
}
"""Keys whose value is a path unless it is one of the named words (or null)."""

PATH_OR_ID = {"data.source": ("sample",), "model.name_or_path": (), "model.tokenizer": (),
              "caption.model": ()}  # fmt: skip
"""Keys that hold a path or a hub id (``owner/name``) or ``tiny:<name>``."""


def project_root() -> Path:
    """The base of relative paths written in config files: the repository root, or the current
    directory for an installed copy of the package without ``train.py`` beside it."""
    return REPO_ROOT if (REPO_ROOT / "train.py").is_file() else Path.cwd()


def looks_like_path(value: str, base: Path) -> bool:
    """Whether a path-or-id value names a file or folder rather than a hub id or tiny model.

    A value that starts with ``.``, ``/`` or ``~``, has more than one ``/`` or exists under
    ``base`` is a path; ``owner/name`` that does not exist there is a hub id.
    """
    if value.startswith("tiny:"):
        return False
    if value.startswith((".", "/", "~")) or value.count("/") > 1:
        return True
    return (base / value).exists()


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _base_for(key: str, sources: dict[str, str]) -> Path:
    return Path.cwd() if sources.get(key) == OVERRIDE else project_root()


def _section_value(cfg: Any, key: str) -> tuple[Any, str]:
    section, _, leaf = key.rpartition(".")
    return getattr(cfg, section), leaf


def resolve_paths(cfg: Any, sources: dict[str, str]) -> None:
    """Make every relative path of a loaded config absolute, in place.

    Args:
        cfg: The :class:`~caslie.config.Config` just built.
        sources: Dotted key -> where its value was set (a file, or :data:`OVERRIDE`); a key
            missing from it holds its default.
    """
    for key, words in ALWAYS_PATHS.items():
        section, leaf = _section_value(cfg, key)
        value = getattr(section, leaf)
        if value is not None and value not in words:
            setattr(section, leaf, _absolute(str(value), _base_for(key, sources)))
    for key, words in PATH_OR_ID.items():
        section, leaf = _section_value(cfg, key)
        value = getattr(section, leaf)
        base = _base_for(key, sources)
        if value is not None and value not in words and looks_like_path(str(value), base):
            setattr(section, leaf, _absolute(str(value), base))
    for voter, value in cfg.cqe.models.items():
        base = _base_for(f"cqe.models.{voter}", sources)
        if looks_like_path(str(value), base):
            cfg.cqe.models[voter] = _absolute(str(value), base)

"""``--print-config``: the resolved config as YAML, each value followed by where it was set; and
the ``--print-config`` / ``--validate`` flags of every command that takes a config.

The output loads back as a config file (the notes are YAML comments), so it can be saved and
edited as the starting point of another run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from caslie.config import Config, to_dict
from caslie.config_paths import project_root

DEFAULT = "default"
"""The source of a value that no file or override set."""

_NOTE_COLUMN = 48


def _source_label(source: str) -> str:
    path = Path(source)
    if path.is_absolute():
        try:
            return str(path.relative_to(project_root()))
        except ValueError:
            return source
    return source


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (a list in flow style)."""
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return _scalar(value)


def _scalar(value: Any) -> str:
    # Dumped inside a list, a scalar is quoted exactly when YAML needs it ('no', 'tiny:x', '').
    return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]


def _lines(node: dict[str, Any], sources: dict[str, str], prefix: str, indent: int) -> list[str]:
    out = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        pad = "  " * indent
        if isinstance(value, dict) and value:
            out.append(f"{pad}{key}:")
            out += _lines(value, sources, dotted + ".", indent + 1)
            continue
        line = f"{pad}{_scalar(key)}: {_flow(value)}"
        note = _source_label(sources.get(dotted, DEFAULT))
        out.append(f"{line.ljust(_NOTE_COLUMN)}  # {note}")
    return out


def format_config(cfg: Config) -> str:
    """The config as commented YAML: every key, its resolved value, and the file (relative to the
    repository root), ``command line`` or ``default`` that gave it the value.

    Secrets read from the environment stay out, as in the run folder's ``config.yaml``.
    """
    sources = getattr(cfg, "_sources", {})
    return "\n".join(_lines(to_dict(cfg), sources, "", 0)) + "\n"


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Give a command that takes a config ``--print-config`` and ``--validate``."""
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each value with the file, command line "
                             "or default that set it, and exit")  # fmt: skip
    parser.add_argument("--validate", action="store_true",
                        help="check keys, values, paths, caches and checkpoints without loading "
                             "a model; exit 0 when valid, else 2 with every problem")  # fmt: skip

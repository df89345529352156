"""``--validate``: check a loaded config against everything that can be checked before a model loads.

Loading the config already checked its keys, types and values. This adds what needs the file
system, the hub cache or Lightning: the rows, image root, caption and vote caches the fusion reads,
the folders the command writes, the checkpoints it loads (a local folder's ``config.json``, a hub
id's reachability or, offline, its local cache) and the Lightning strategy name. Every problem is
reported, not only the first.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from lightning.pytorch.strategies import StrategyRegistry

from caslie.config import Config
from caslie.config_print import format_config
from caslie.data.advice import fill_command
from caslie.data.cache import VoteCache
from caslie.data.sources import resolve_source
from caslie.errors import EXIT_USER_ERROR, CaslieError
from caslie.hub import hub_offline, hub_reachable
from caslie.pretrained import tiny_names

COMMANDS = ("train", "predict", "inspect", "caption", "vote")
"""What a config can be validated for: each reads and writes different things."""


def _writable(path: Path, key: str) -> str | None:
    """A problem when ``path`` cannot be created or written, else ``None``."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{key}: {path} cannot be created ({probe} is not a folder)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{key}: {path} cannot be created ({probe} is not writable)"
    return None


def _hub_cache_folder(repo_id: str, repo_type: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo_id.replace('/', '--')}"


@functools.cache
def _hub_reason() -> str | None:
    return hub_reachable()  # probed once per process, however many ids are checked


def _hub_problem(repo_id: str, key: str, repo_type: str = "model") -> str | None:
    if hub_offline():
        if _hub_cache_folder(repo_id, repo_type).is_dir():
            return None
        return (f"{key}: '{repo_id}' is not in the local hub cache and the hub is off "
                "(HF_HUB_OFFLINE=1); download it on a machine with hub access first")  # fmt: skip
    reason = _hub_reason()
    if reason is None:
        return None
    return f"{key}: cannot reach the hub to fetch '{repo_id}' ({reason})"


def _checkpoint_problem(name_or_path: str, key: str) -> str | None:
    """A problem with a model key's value: an unknown tiny model, a local folder that is not a
    checkpoint, or a hub id that cannot be fetched."""
    if name_or_path.startswith("tiny:"):
        name = name_or_path.split(":", 1)[1]
        if name in tiny_names():
            return None
        return f"{key}: unknown tiny model '{name_or_path}' (available: {', '.join(tiny_names())})"
    path = Path(name_or_path)
    if path.is_absolute():
        if not path.is_dir():
            return f"{key}: {path} does not exist"
        if not (path / "config.json").is_file():
            return f"{key}: {path} has no config.json (not a saved model folder)"
        return None
    return _hub_problem(name_or_path, key)


def _data_problems(cfg: Config, command: str) -> list[str]:
    data, out = cfg.data, []
    try:
        kind, where = resolve_source(data.source)
    except CaslieError as err:
        return [str(err)]
    if kind == "hub" and (problem := _hub_problem(str(where), "data.source", "dataset")):
        out.append(problem)
    if data.image_root and not Path(data.image_root).is_dir():
        out.append(f"data.image_root: {data.image_root} does not exist")
    if command in ("caption",):
        return out
    if data.fusion_kind != "none" and data.caption_cache and not Path(data.caption_cache).is_dir():
        out.append(f"data.captions: caption cache {data.caption_cache} does not exist; fill it "
                   f"with: {fill_command(data, 'caption')}")  # fmt: skip
    if command == "vote":
        return out
    if data.fusion_kind in ("mv", "single"):
        if not data.votes:
            out.append(f"data.votes: data.fusion={data.fusion} needs a vote cache folder")
        elif not Path(data.votes).is_dir():
            out.append(f"data.votes: vote cache {data.votes} does not exist; fill it with: "
                       f"{fill_command(data, 'vote')}")  # fmt: skip
        else:
            missing = sorted(set(data.fusion_voters) - set(VoteCache(data.votes).voters()))
            if missing:
                out.append(f"data.votes: {data.votes} has no votes of {', '.join(missing)}; fill "
                           f"them with: {fill_command(data, 'vote')}")  # fmt: skip
    return out


def _model_problems(cfg: Config, command: str) -> list[str]:
    if command == "caption":
        checks = [(cfg.caption.model, "caption.model")]
    elif command == "vote":
        unknown = [v for v in cfg.data.voters if v not in cfg.cqe.models]
        if unknown:
            return [f"data.voters: {', '.join(unknown)} not in cqe.models (voter -> checkpoint)"]
        checks = [(cfg.cqe.models[v], f"cqe.models.{v}") for v in cfg.data.voters]
    elif command == "inspect" and cfg.data.prompt_template != "chat":
        checks = []  # the paper's templates render without a tokenizer
    else:
        checks = [(cfg.model.name_or_path, "model.name_or_path")]
        if cfg.model.tokenizer:
            checks.append((cfg.model.tokenizer, "model.tokenizer"))
    return [p for value, key in checks if (p := _checkpoint_problem(value, key))]


def _trainer_problems(cfg: Config) -> list[str]:
    t, out = cfg.trainer, []
    known = {"auto", "ddp", "fsdp", *StrategyRegistry.available_strategies()}
    if t.strategy not in known:
        out.append(f"trainer.strategy: Lightning has no strategy '{t.strategy}'")
    if t.ckpt_path not in (None, "last") and not Path(t.ckpt_path).is_file():
        out.append(f"trainer.ckpt_path: {t.ckpt_path} does not exist")
    return out


def validate(cfg: Config, command: str = "train") -> list[str]:
    """Everything wrong with ``cfg`` for ``command`` that shows before a model loads.

    Args:
        cfg: A loaded config (its keys, types and values are already checked).
        command: One of :data:`COMMANDS`.

    Returns:
        One line per problem, naming the key and the resolved path or id; empty when none.
    """
    out = _data_problems(cfg, command)
    if command in ("train", "predict"):
        for key in ("run.output_dir", "data.cache_dir"):
            section, leaf = key.split(".")
            out.append(_writable(Path(getattr(getattr(cfg, section), leaf)), key))
        out += _trainer_problems(cfg)
    if command == "caption":
        out.append(_writable(Path(cfg.data.caption_cache), "data.captions")
                   if cfg.data.caption_cache else
                   "data.captions: 'dataset' is not a cache folder that captions can be written to")  # fmt: skip
    if command == "vote":
        out.append(_writable(Path(cfg.data.votes), "data.votes") if cfg.data.votes else
                   "data.votes: not set; name the vote cache folder the votes go to")  # fmt: skip
    out += _model_problems(cfg, command)
    return [p for p in out if p]


def config_flags(cfg: Config, command: str, print_config: bool, validate_only: bool,
                 prog: str) -> int | None:  # fmt: skip
    """Carry out ``--print-config`` and ``--validate`` for a command.

    Returns:
        The exit code when one of them was given (0, or 2 with every problem on stderr), else
        ``None``: the command goes on.
    """
    if print_config:
        sys.stdout.write(format_config(cfg))
    if not validate_only:
        return 0 if print_config else None
    problems = validate(cfg, command)
    for problem in problems:
        print(f"{prog}: error: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USER_ERROR
    print(f"{prog}: the config is valid for {command}", file=sys.stderr)
    return 0

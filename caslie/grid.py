"""Ablation grids: a YAML file expands to runs (the product of its axes, per caption chain), run
in sequence here or submitted as SLURM job arrays, skipping what has already finished.

A grid file::

    name: demo                        # runs go to <output_dir>/<name>/<run>
    output_dir: runs/grids            # relative to the repository (where train.py is)
    config: ../demo.yaml              # every run's config, relative to this file
    overrides: [trainer.max_epochs=4] # for every run
    axes:                             # the product of the axes; each value is a list of overrides
      fusion:
        text: [data.fusion=none]
        mv: [data.fusion=mv]
    chains:                           # optional (Table 4): caption -> vote -> train per captioner
      llava15:
        caption: {config: ../caption/llava15.yaml, overrides: []}
        vote: {config: ../cqe/paper.yaml, overrides: []}

A chain's caption step writes ``<grid>/<chain>/captions``, its vote step reads them and writes
``<grid>/<chain>/votes``, and the chain's training runs read both. A training run is finished when
its folder holds ``status.json`` (what ``train.py`` writes at the end); a caption or vote step when
the grid wrote its marker after the step exited 0. So a grid rerun after a crash runs only what
is missing, and a training run cut short resumes (every run is started with ``--resume``).
"""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from caslie.config import load_config, read_yaml
from caslie.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STAGES = ("caption", "vote", "train")
GRID_MANIFEST = "grid.json"
TABLES = ("table2", "table3", "table4", "a9")
"""Report layouts a grid can name (``table:``): the paper's Tables 2, 3, 4 and A9."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class Step:
    """One command of a grid.

    Attributes:
        name: Unique within the grid (a training run's ``run.name``).
        stage: ``caption``, ``vote`` or ``train``.
        argv: The command, as a process is started with it.
        done: The file whose existence means the step has finished.
        after: Names of the steps that must finish first.
        marks_done: Whether the grid writes ``done`` itself once the command exits 0 (caption and
            vote steps; ``train.py`` writes its own ``status.json``).
    """

    name: str
    stage: str
    argv: tuple[str, ...]
    done: Path
    after: tuple[str, ...] = ()
    marks_done: bool = False

    def finished(self) -> bool:
        return self.done.is_file()

    @property
    def shell(self) -> str:
        return shlex.join(self.argv)


@dataclass
class Grid:
    """An expanded grid: its folder, steps in dependency order, and the report layout."""

    name: str
    root: Path
    steps: list[Step] = field(default_factory=list)
    table: str = "table2"
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each training run's place in the grid: ``{run: {axis or "chain": value}}``."""

    def stage(self, stage: str) -> list[Step]:
        return [s for s in self.steps if s.stage == stage]

    def write_manifest(self) -> Path:
        """Write ``<root>/grid.json`` (its name, report layout and runs), what ``caslie report``
        reads to lay the runs out; returns its path."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / GRID_MANIFEST
        body = {"name": self.name, "table": self.table, "runs": self.labels}
        path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        return path


def _list(node: Any, where: str) -> list[str]:
    if node is None:
        return []
    if not isinstance(node, (list, ListConfig)) or not all(isinstance(v, str) for v in node):
        raise ConfigError(f"{where} must be a list of key=value overrides")
    return [str(v) for v in node]


def _name(value: Any, where: str) -> str:
    text = str(value)
    if not _NAME.fullmatch(text):
        raise ConfigError(f"{where} '{text}' must be letters, digits and _ . + - only")
    return text


def _file(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must name a config file")
    path = (base / value).resolve()
    if not path.is_file():
        raise ConfigError(f"{where}: config file not found: {path}")
    return path


def load_grid(path: str | Path, python: str = sys.executable,
              caslie: str | None = None) -> Grid:  # fmt: skip
    """Expand a grid file into its steps.

    Args:
        path: The grid YAML.
        python: The interpreter that runs ``train.py``.
        caslie: The ``caslie`` command for caption and vote steps (default: this interpreter's).

    Raises:
        ConfigError: the file is missing, malformed, or names missing config files.
    """
    path = Path(path).resolve()
    spec = read_yaml(path)
    unknown = set(spec.keys()) - {"name", "output_dir", "config", "overrides", "axes", "chains",
                                  "table"}  # fmt: skip
    if unknown:
        raise ConfigError(f"grid file {path}: unknown keys {sorted(map(str, unknown))}")
    name = _name(spec.get("name", path.stem), f"{path}: name")
    root = (REPO / str(spec.get("output_dir", "runs/grids"))).resolve() / name
    config = _file(path.parent, spec.get("config"), f"{path}: config")
    common = _list(spec.get("overrides"), f"{path}: overrides")
    caslie = caslie or str(Path(python).parent / "caslie")

    axes = spec.get("axes") or OmegaConf.create({})
    if not isinstance(axes, DictConfig):
        raise ConfigError(f"{path}: axes must map axis names to {{value: [overrides]}}")
    choices: list[list[tuple[str, list[str]]]] = []
    for axis, values in axes.items():
        if not isinstance(values, DictConfig) or not values:
            raise ConfigError(f"{path}: axes.{axis} must map values to lists of overrides")
        choices.append([(_name(v, f"{path}: axes.{axis} value"),
                         _list(o, f"{path}: axes.{axis}.{v}")) for v, o in values.items()])  # fmt: skip

    table = str(spec.get("table", "table2"))
    if table not in TABLES:
        raise ConfigError(f"{path}: table '{table}' is not one of {', '.join(TABLES)}")
    grid = Grid(name, root, table=table)
    chains = spec.get("chains") or {None: None}
    for chain, steps in chains.items():
        chain_overrides, after = [], ()
        if chain is not None:
            chain = _name(chain, f"{path}: chains key")
            chain_overrides, after = _chain_steps(grid, path, chain, steps, caslie)
        for combo in itertools.product(*choices) if choices else [()]:
            parts = [v for v, _ in combo]
            run = "-".join(([chain] if chain else []) + parts) or name
            overrides = [o for _, os in combo for o in os]
            try:  # a typo in a grid fails now, not hours in, when its run comes up
                load_config(config, [*common, *chain_overrides, *overrides])
            except ConfigError as err:
                raise ConfigError(f"{path}: run {run}: {err}") from None
            argv = (python, str(REPO / "train.py"), "--config", str(config), "--resume", *common,
                    *chain_overrides, *overrides, f"run.output_dir={root}", f"run.name={run}")  # fmt: skip
            grid.steps.append(Step(run, "train", argv, root / run / "status.json", after))
            grid.labels[run] = ({"chain": chain} if chain else {}) | dict(
                zip(map(str, axes.keys()), parts, strict=True)
            )
    names = [s.name for s in grid.steps]
    if len(names) != len(set(names)):
        raise ConfigError(f"{path}: two steps share a name; give axis values distinct names")
    return grid


def _chain_steps(grid: Grid, path: Path, chain: str, steps: Any,
                 caslie: str) -> tuple[list[str], tuple[str, ...]]:  # fmt: skip
    """Add a chain's caption and vote steps; return the training overrides and dependencies."""
    if not isinstance(steps, DictConfig) or set(steps.keys()) - {"caption", "vote"}:
        raise ConfigError(f"{path}: chains.{chain} takes 'caption' and 'vote' steps")
    folder = grid.root / chain
    train_overrides: list[str] = []
    after: tuple[str, ...] = ()
    for stage, writes in (("caption", "captions"), ("vote", "votes")):
        if stage not in steps:
            continue
        where = f"{path}: chains.{chain}.{stage}"
        cfg = _file(path.parent, steps[stage].get("config"), f"{where}.config")
        extra = _list(steps[stage].get("overrides"), f"{where}.overrides")
        output = f"data.{writes}={folder / writes}"
        # A vote step reads the chain's captions (train_overrides so far) and writes its votes.
        argv = (caslie, stage, "--config", str(cfg), *extra, *train_overrides, output)
        grid.steps.append(Step(f"{chain}.{stage}", stage, argv, folder / f".{stage}.done", after,
                               marks_done=True))  # fmt: skip
        train_overrides.append(output)
        if stage == "caption":
            train_overrides.append(f"data.caption_model={load_config(cfg, extra).caption.model}")
        after = (f"{chain}.{stage}",)
    return train_overrides, after


def run_local(grid: Grid, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Run every unfinished step in order, here; returns ``{step: outcome}``.

    A failed step is reported and the steps that depend on it are skipped; the others go on.
    """
    outcome: dict[str, str] = {}
    grid.write_manifest()
    for step in grid.steps:
        if step.finished():
            outcome[step.name] = "finished before"
            echo(f"grid {grid.name}: {step.name}: already finished, skipped")
            continue
        blocked = [a for a in step.after if outcome.get(a) == "failed"
                   or outcome.get(a, "").startswith("skipped")]  # fmt: skip
        if blocked:
            outcome[step.name] = f"skipped ({blocked[0]} failed)"
            echo(f"grid {grid.name}: {step.name}: skipped, {blocked[0]} failed")
            continue
        echo(f"grid {grid.name}: {step.name}: {step.shell}")
        done = subprocess.run(step.argv, cwd=REPO, check=False)
        if done.returncode == 0 and step.marks_done:
            step.done.parent.mkdir(parents=True, exist_ok=True)
            step.done.write_text("done\n")
        outcome[step.name] = "ran" if done.returncode == 0 and step.finished() else "failed"
        if outcome[step.name] == "failed":
            echo(f"grid {grid.name}: {step.name}: failed (exit {done.returncode})")
    return outcome


def submit_slurm(grid: Grid, sbatch_options: Iterable[str] = (),
                 echo: Callable[[str], None] = print) -> dict[str, str]:  # fmt: skip
    """Submit each stage's unfinished steps as one SLURM job array (``slurm/grid.sbatch``), each
    stage after the one it depends on (``afterok``); returns ``{stage: job id}``."""
    jobs: dict[str, str] = {}
    grid.write_manifest()
    lists = grid.root / "slurm"
    lists.mkdir(parents=True, exist_ok=True)
    (grid.root / "logs").mkdir(parents=True, exist_ok=True)
    for stage in STAGES:
        todo = [s for s in grid.stage(stage) if not s.finished()]
        if not todo:
            continue
        commands = lists / f"{stage}.txt"
        lines = []
        for s in todo:
            mark = f" && mkdir -p {shlex.quote(str(s.done.parent))} && touch " \
                   f"{shlex.quote(str(s.done))}" if s.marks_done else ""  # fmt: skip
            lines.append(s.shell + mark)
        commands.write_text("\n".join(lines) + "\n")
        depends = [jobs[p] for p in STAGES[: STAGES.index(stage)] if p in jobs]
        argv = ["sbatch", "--parsable", f"--array=0-{len(todo) - 1}",
                f"--job-name={grid.name}-{stage}",
                f"--output={grid.root / 'logs' / f'{stage}-%A_%a.out'}", *sbatch_options]  # fmt: skip
        if depends:
            argv.append("--dependency=afterok:" + ":".join(depends))
        argv += [str(REPO / "slurm" / "grid.sbatch"), str(commands)]
        done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, check=False)
        if done.returncode != 0:
            raise ConfigError(f"sbatch refused the {stage} array: {done.stderr.strip()}")
        jobs[stage] = done.stdout.strip().split(";")[0]
        echo(f"grid {grid.name}: {stage}: {len(todo)} step(s) as job array {jobs[stage]}"
             + (f" after {', '.join(depends)}" if depends else ""))  # fmt: skip
    if not jobs:
        echo(f"grid {grid.name}: every step has finished; nothing to submit")
    return jobs

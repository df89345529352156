"""The ``caslie`` console script."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from caslie.config import SPLITS, Config, load_config, split_argv
from caslie.config_print import add_config_flags
from caslie.console import setup_logging
from caslie.data.fusion import fuse_records
from caslie.data.records import SHOWN_SKIPS, load_records
from caslie.errors import EXIT_USER_ERROR, CaslieError, ConfigError, DataError, MissingPathError
from caslie.parsing import PARSERS
from caslie.prompts import render_prompt

log = logging.getLogger("caslie")

# Commands import their module when they run: torch and transformers take seconds to import, and
# `caslie inspect` (and --help) need neither.


def _tokenizer_for(cfg: Config):
    if cfg.data.prompt_template != "chat":
        return None  # the paper's template needs no tokenizer to render
    from caslie.pretrained import tokenizer_for

    return tokenizer_for(cfg.model)


def inspect(cfg: Config, split: str, n: int, fmt: str, out=None) -> int:
    """Print the exact prompts the model will see for ``n`` rows per task of ``split``.

    Args:
        cfg: The run config.
        split: The canonical split to show.
        n: Rows per task.
        fmt: ``text`` or ``jsonl``.
        out: Where to print (default: the ``sys.stdout`` of the call, not of the import).

    Returns:
        The number of prompts printed.
    """
    out = out if out is not None else sys.stdout
    records, report = load_records(cfg.data, splits=[split])
    per_task: dict[str, int] = {}
    chosen = []
    for r in records:
        if per_task.get(r.task, 0) < n:
            per_task[r.task] = per_task.get(r.task, 0) + 1
            chosen.append(r)
    fused, fusion_report = fuse_records(chosen, cfg.data)
    tokenizer = _tokenizer_for(cfg)
    for ex in fused:
        r = ex.record
        prompt = render_prompt(
            r.instruction, ex.input_text, ex.options_text, cfg.data.prompt_template, tokenizer
        )
        if fmt == "jsonl":
            row = {"id": r.id, "task": r.task, "split": r.split, "prompt": prompt, "target": r.output,
                   "captions": list(ex.captions), "caption_used": list(ex.used), "votes": list(ex.votes)}  # fmt: skip
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            continue
        out.write(f"=== {r.id}  task={r.task}  split={r.split}  ({r.location})\n")
        for j, (used, votes) in enumerate(zip(ex.used, ex.votes, strict=True)):
            tally = " ".join(f"{v}={x}" for v, x in votes.items()) or "-"
            out.write(f"--- image {j}: {'USED' if used else 'not used'}; votes: {tally}\n")
        out.write(prompt)
        out.write(f"<target> {r.output}\n\n")
    if fmt == "text":
        out.write(report.summary() + "\n")
        if report.skipped_rows:
            shown = min(SHOWN_SKIPS, len(report.skipped_rows))
            out.write(f"skipped rows (first {shown} of {len(report.skipped_rows)}):\n")
            out.write(report.first_skipped() + "\n")
        if cfg.data.fusion != "none":
            out.write(f"fusion={cfg.data.fusion} over the printed rows:\n{fusion_report.table()}\n")
    return len(fused)


TRAIN_PY = Path(__file__).resolve().parents[1] / "train.py"
"""The composition root, which ``caslie predict`` starts as a process (caslie sits below it)."""


def predict(args: argparse.Namespace, overrides: list[str]) -> int:
    """``caslie predict``: run ``train.py --predict`` and return its exit code.

    Raises:
        ConfigError: neither ``--config`` nor ``--run``, or both ``--model`` and ``--run``.
        MissingPathError: ``train.py`` is not beside the package (caslie runs from its repository).
    """
    if args.config is None and args.run is None:
        raise ConfigError("caslie predict needs --config (with --model) or --run")
    if args.model and args.run:
        raise ConfigError(
            "caslie predict takes --model or --run, not both (--run brings its base model)"
        )
    if not TRAIN_PY.is_file():
        raise MissingPathError(
            f"caslie predict runs {TRAIN_PY}, which does not exist; run it from the repository"
        )
    config = args.config or str(args.run / "config.yaml")
    command = [sys.executable, str(TRAIN_PY), "--predict", "--config", config, *overrides]
    if args.model:
        command.append(f"model.name_or_path={args.model}")
    if args.run:
        command += ["--adapter-run", str(args.run), "--checkpoint", args.checkpoint]
    return subprocess.run(command, check=False).returncode


def _print_dry_run(items, fmt: str) -> None:
    """Print dry-run prompts as JSON lines, or as readable blocks."""
    out = sys.stdout
    for item in items:
        if fmt == "jsonl":
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
            continue
        who = f"  voter={item['voter']}" if "voter" in item else ""
        out.write(
            f"=== {item['id']}  task={item['task']}  split={item['split']}  image={item['image_index']}{who}\n"
        )
        out.write((item["chat"] if item["chat"] is not None else item["prompt"]) + "\n\n")


def _write_metrics(path: Path, metrics: dict) -> None:
    """Write ``caslie evaluate``'s metrics JSON.

    Raises:
        DataError: the file cannot be written (naming it and why).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    except OSError as err:
        raise DataError(f"--out {path}: cannot write the metrics ({err.strerror or err})") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caslie", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print the fused prompts the model will see")
    ins.add_argument("--config", required=True, help="YAML config (dotted overrides may follow)")
    ins.add_argument("--split", default="train", choices=SPLITS)
    ins.add_argument("--n", type=int, default=3, help="rows per task")
    ins.add_argument("--format", default="text", choices=("text", "jsonl"))
    add_config_flags(ins)
    ev = sub.add_parser("evaluate", help="score a predictions file with the paper's metrics")
    ev.add_argument(
        "--data", required=True, help="MMECInstruct rows (file, folder, hub id or 'sample')"
    )
    ev.add_argument("--predictions", required=True, type=Path,
                    help="JSON list aligned with the rows, or JSONL with 'id' and 'prediction'")  # fmt: skip
    ev.add_argument("--parser", default="paper", choices=PARSERS)
    ev.add_argument("--split", help="score only this split (default: each split on its own)")
    ev.add_argument("--out", type=Path, help="also write the metrics JSON here")
    ev.add_argument("--allow-missing", action="store_true",
                    help="score even when predictions miss rows, repeat ids or name ids that are "
                         "not rows (each counted under 'coverage'); refused by default")  # fmt: skip
    for name, what in (("caption", "EC3 captions into the caption cache data.captions"),
                       ("vote", "CQE votes into the vote cache data.votes")):  # fmt: skip
        job = sub.add_parser(name, help=what)
        job.add_argument("--config", action="append",
                         help="YAML config, repeatable: merged in order (dotted overrides may follow)")  # fmt: skip
        job.add_argument("--tasks", nargs="+", help="task codes (default: data.tasks)")
        job.add_argument("--splits", nargs="+", choices=SPLITS, help="splits (default: all)")
        job.add_argument("--limit", type=int, help="at most this many rows per task and split")
        job.add_argument(
            "--dry-run",
            action="store_true",
            help="print the prompts the command would send, loading no model weights",
        )
        job.add_argument(
            "--format",
            default="jsonl",
            choices=("jsonl", "text"),
            help="with --dry-run: one JSON object per prompt, or readable text",
        )
        if name == "caption":
            job.add_argument(
                "--retry-failed", action="store_true", help="caption failed images again"
            )
        else:
            job.add_argument("--compare", action="store_true",
                             help="also run generate mode and report its agreement with score mode")  # fmt: skip
        add_config_flags(job)
    pr = sub.add_parser(
        "predict", help="evaluation only: a released checkpoint, or a run's adapter"
    )
    pr.add_argument("--config", help="YAML config (default with --run: the run's config.yaml)")
    pr.add_argument("--model", help="the checkpoint to evaluate (hub id, folder or tiny:<name>)")
    pr.add_argument("--run", type=Path, help="a training run whose adapter is evaluated")
    pr.add_argument("--checkpoint", default="best", help="with --run: best, last or a file")
    add_config_flags(pr)
    gr = sub.add_parser("grid", help="run an ablation grid here, or submit it to SLURM")
    gr.add_argument("grid", type=Path, help="grid file (configs/grids/<name>.yaml)")
    gr.add_argument("--slurm", action="store_true",
                    help="submit one job array per stage (caption -> vote -> train) instead")  # fmt: skip
    gr.add_argument("--dry-run", action="store_true", help="print the steps and what is left")
    gr.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                    help="with --slurm: an extra sbatch option, e.g. --sbatch=--partition=gpu")  # fmt: skip
    rep = sub.add_parser("report", help="the paper's tables (md, tex, csv) and charts of a grid")
    rep.add_argument("folder", type=Path, help="a grid's folder (runs/grids/<name>) or of runs")
    rep.add_argument("--table", choices=("table2", "table3", "table4", "a9"),
                     help="the layout (default: the grid's)")  # fmt: skip
    rep.add_argument("--paper", action="store_true",
                     help="add the deltas against the paper's published numbers")  # fmt: skip
    rep.add_argument("--out", type=Path, help="output folder (default: FOLDER/report)")
    fix = sub.add_parser("repair", help="move corrupt lines of a caption or vote cache aside")
    fix.add_argument("folder", type=Path, help="the cache folder (data.captions or data.votes)")
    ex = sub.add_parser("export", help="a run's model as a PEFT adapter or a standalone model")
    ex.add_argument("run_dir", nargs="?", type=Path, help="the run folder (runs/<name>)")
    ex.add_argument("--run", type=Path, help="the run folder, as an option (same as RUN_DIR)")
    ex.add_argument("--out", required=True, type=Path, help="folder to write")
    ex.add_argument("--format", default="merged", choices=("merged", "peft"),
                    help="merged: the adapter merged into the base model (FashionCLIP: the CLIP "
                         "model and heads); peft: the adapter folder PeftModel loads")  # fmt: skip
    ex.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint file")
    ex.add_argument("--force", action="store_true", help="replace a non-empty --out")
    return parser


CONFIG_COMMANDS = ("inspect", "caption", "vote", "predict")
"""Commands that take a config, its overrides, ``--print-config`` and ``--validate``."""


def _config_only(args: argparse.Namespace, overrides: list[str]) -> int:
    """``--print-config`` / ``--validate`` of a command, which then does nothing else."""
    from caslie.validate import config_flags  # imports Lightning (its strategy names) and torch

    if args.command == "predict":
        if args.config is None and args.run is None:
            raise ConfigError("caslie predict needs --config (with --model) or --run")
        config = args.config or str(args.run / "config.yaml")
        overrides = overrides + [f"model.name_or_path={args.model}"] * bool(args.model)
    else:
        config = args.config
    code = config_flags(load_config(config, overrides), args.command, args.print_config,
                        args.validate, "caslie")  # fmt: skip
    return 0 if code is None else code


def _grid(path: Path, slurm: bool, dry_run: bool, sbatch: list[str]) -> None:
    from caslie import grid  # Commands import their module late: caslie starts without torch

    spec = grid.load_grid(path)
    if dry_run:
        for step in spec.steps:
            state = "finished" if step.finished() else "to run"
            after = f" (after {', '.join(step.after)})" if step.after else ""
            print(f"{step.stage:7s} {step.name}: {state}{after}\n    {step.shell}")
        return
    if slurm:
        grid.submit_slurm(spec, sbatch)
        return
    outcome = grid.run_local(spec)
    failed = sorted(n for n, o in outcome.items() if o != "ran" and o != "finished before")
    print(f"grid {spec.name}: {sum(o == 'ran' for o in outcome.values())} ran, "
          f"{sum(o == 'finished before' for o in outcome.values())} had finished, "
          f"{len(failed)} failed or skipped; runs in {spec.root}")  # fmt: skip
    if failed:
        raise CaslieError(f"grid {spec.name}: not finished: {', '.join(failed)}; rerun the same "
                          "command to run only those")  # fmt: skip


def _export(args: argparse.Namespace) -> None:
    from caslie.export import (
        export_run,  # Commands import their module late: caslie starts without torch
    )

    if (args.run_dir is None) == (args.run is None):
        raise ConfigError("caslie export takes the run folder once: RUN_DIR or --run")
    run_dir = args.run_dir or args.run
    out = export_run(run_dir, args.out, args.format, args.checkpoint, args.force)
    print(f"{args.format} export of {run_dir}: {out}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``caslie``."""
    parser = _parser()
    options, overrides = split_argv(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(options)
    overrides = unknown + overrides  # an unknown option gets the config's key suggestions
    if overrides and args.command not in CONFIG_COMMANDS:
        parser.error(f"unrecognized arguments: {' '.join(overrides)}")
    setup_logging()
    try:
        if args.command in CONFIG_COMMANDS and (args.print_config or args.validate):
            return _config_only(args, overrides)
        if args.command == "inspect":
            inspect(load_config(args.config, overrides), args.split, args.n, args.format)
        elif args.command == "caption":
            from caslie import captioning

            cfg = load_config(args.config, overrides)
            if args.dry_run:
                _print_dry_run(
                    captioning.dry_run(cfg, args.tasks, args.splits, args.limit), args.format
                )
            else:
                print(
                    captioning.run_caption(
                        cfg, args.tasks, args.splits, args.limit, args.retry_failed
                    ).text()
                )
        elif args.command == "vote":
            from caslie import cqe

            cfg = load_config(args.config, overrides)
            if args.dry_run:
                _print_dry_run(cqe.dry_run(cfg, args.tasks, args.splits, args.limit), args.format)
            else:
                print(cqe.run_vote(cfg, args.tasks, args.splits, args.limit, args.compare).text())
        elif args.command == "evaluate":
            from caslie.evaluation import evaluate_file
            from caslie.metrics import rounded

            metrics = rounded(  # printed and written alike, as a training run's metrics.json
                evaluate_file(
                    args.data, args.predictions, args.parser, args.split, args.allow_missing
                )
            )
            print(json.dumps(metrics, indent=2))
            if args.out:
                _write_metrics(args.out, metrics)
        elif args.command == "predict":
            return predict(args, overrides)
        elif args.command == "grid":
            _grid(args.grid, args.slurm, args.dry_run, args.sbatch)
        elif args.command == "report":
            from caslie.render import write_report

            written = write_report(args.folder, args.table, args.paper, args.out)
            print(written[0].read_text(encoding="utf-8"))
            print("wrote " + ", ".join(str(p) for p in written))
        elif args.command == "repair":
            from caslie.data.cache import repair_cache

            moved = repair_cache(args.folder)
            print(
                f"moved {len(moved)} corrupt line(s) to rejected/"
                + "".join(f"\n  {m}" for m in moved)
            )
        elif args.command == "export":
            _export(args)
    except CaslieError as err:
        print(f"caslie: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:  # output piped into `head`: not an error
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

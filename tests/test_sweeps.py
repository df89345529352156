"""Every shipped W&B sweep works: its metric is logged, and two trials run as the agent would start
them, each in its own run folder with its own overrides in effect.

The agent's command line is built from the sweep's ``command`` list the way ``wandb agent`` expands
its macros (``${env}``, ``${interpreter}``, ``${program}``, ``${args}``, ``${args_no_hyphens}``),
and the trial's environment carries the agent's ``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID``. Demo-scale
overrides (a tiny model on the sample, one short epoch) are appended after the agent's arguments;
they never touch a swept parameter.
"""

import csv
import itertools
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from caslie.config import load_config
from train import BEST_MONITOR

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "wandb" / "sweeps").glob("*.yaml"))
TRIAL_TIMEOUT_S = 600


def _scale_down(tmp: Path) -> list[str]:
    return [
        "model.name_or_path=tiny:mistral", f"data.votes={REPO / 'data/sample/votes'}",
        "data.tasks=[ap,sa]", "data.max_length=512", "data.num_workers=0",
        f"data.cache_dir={tmp / 'cache'}", f"run.output_dir={tmp / 'runs'}",
        "optim.effective_batch_size=16", "optim.micro_batch_size=8", "optim.eval_batch_size=32",
        "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.max_epochs=1",
        "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "logger.wandb.log_predictions=0",
    ]  # fmt: skip


def _sample(spec: dict, rng: random.Random) -> object:
    """One value of a sweep parameter, as the agent draws it."""
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choice(spec["values"])
    kind = spec.get("distribution", "uniform")
    lo, hi = spec["min"], spec["max"]
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "int_uniform":
        return rng.randint(lo, hi)
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    raise AssertionError(f"the test does not draw distribution '{kind}' yet: add it here")


def _parameter_sets(sweep: dict, n: int) -> list[dict]:
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        grid = [dict(zip(params, combo, strict=True))
                for combo in itertools.product(*(p.get("values", [p.get("value")]) for p in params.values()))]  # fmt: skip
        return [grid[0], grid[-1]][:n]
    rng = random.Random(0)
    return [{k: _sample(v, rng) for k, v in params.items()} for _ in range(n)]


def _command(sweep: dict, params: dict) -> list[str]:
    """The agent's expansion of the sweep's ``command`` (values as Python's ``str()``)."""
    out: list[str] = []
    for item in sweep["command"]:
        if item == "${env}":
            out.append("/usr/bin/env")
        elif item == "${interpreter}":
            out.append(sys.executable)
        elif item == "${program}":
            out.append(sweep["program"])
        elif item == "${args}":
            out += [f"--{k}={v}" for k, v in params.items()]
        elif item == "${args_no_hyphens}":
            out += [f"{k}={v}" for k, v in params.items()]
        else:
            assert "${" not in item, f"unknown macro {item}"
            out.append(item)
    return out


def _config_file(command: list[str]) -> str:
    return command[command.index("--config") + 1]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_metric_is_the_one_the_run_logs_and_parameters_are_config_keys(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"]["name"] == BEST_MONITOR
    assert "${interpreter}" in sweep["command"]  # the agent's Python, with its packages
    for params in _parameter_sets(sweep, 2):
        command = _command(sweep, params)
        overrides = command[command.index(_config_file(command)) + 1 :]
        load_config(REPO / _config_file(command), overrides)  # every key and value is valid


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_two_trials_run_as_the_agent_starts_them(path, tmp_path):
    sweep = yaml.safe_load(path.read_text())
    scale = _scale_down(tmp_path)
    assert not {o.split("=")[0] for o in scale} & set(sweep["parameters"]), "keep swept keys free"
    for trial, params in enumerate(_parameter_sets(sweep, 2)):
        run_id = f"trial{trial}x{path.stem.replace('_', '')}"[:16]
        env = dict(
            os.environ, WANDB_SWEEP_ID="testsweep", WANDB_RUN_ID=run_id, WANDB_MODE="offline"
        )
        command = _command(sweep, params) + scale
        out = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=TRIAL_TIMEOUT_S)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        name = load_config(REPO / _config_file(command)).run.name
        run_dir = tmp_path / "runs" / f"{name}-{run_id}"
        saved = OmegaConf.load(run_dir / "config.yaml")
        for key, value in params.items():
            got = OmegaConf.select(saved, key)
            assert got == (pytest.approx(value) if isinstance(value, float) else value), key
        assert (run_dir / "wandb_run_id").read_text() == run_id
        assert list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
        with (run_dir / "csv" / "metrics.csv").open() as fh:
            logged = next(csv.reader(fh))
        assert sweep["metric"]["name"] in logged
    assert len(list((tmp_path / "runs").iterdir())) == 2

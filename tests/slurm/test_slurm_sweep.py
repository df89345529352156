"""W&B sweep trials as a SLURM job array (``slurm/sweep_agent.sbatch``) on the one-node test
cluster. The test cluster has no W&B server, so a stand-in ``wandb`` executable plays the agent: it
takes the trial of its array task from the sweep file, sets the agent's ``WANDB_SWEEP_ID`` and
``WANDB_RUN_ID``, and starts the sweep's ``command`` as ``wandb agent`` expands it (``python``
found on ``PATH``). What is under test is the job script and the trial it starts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from omegaconf import OmegaConf

from tests.slurm.cluster import Job, SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

AGENT = """#!{python}
import itertools, json, os, subprocess, sys
import yaml
log = {{"argv": sys.argv[1:], "task": os.environ["SLURM_ARRAY_TASK_ID"],
        "python": subprocess.run(["/usr/bin/env", "python", "-c", "import sys; print(sys.prefix)"],
                                 capture_output=True, text=True).stdout.strip()}}
sweep = yaml.safe_load(open(sys.argv[-1]))
params = sweep["parameters"]
trials = list(itertools.product(*(p["values"] for p in params.values())))
values = dict(zip(params, trials[int(log["task"])]))
args = {{"${{env}}": ["/usr/bin/env"], "${{interpreter}}": ["python"], "${{program}}": [sweep["program"]],
        "${{args_no_hyphens}}": [f"{{k}}={{v}}" for k, v in values.items()]}}
command = [part for item in sweep["command"] for part in args.get(item, [item])]
command += json.loads(os.environ["TRIAL_OVERRIDES"])
run_id = "sweeptrial" + log["task"]
env = dict(os.environ, WANDB_SWEEP_ID="slurmsweep", WANDB_RUN_ID=run_id, WANDB_MODE="offline")
open(os.environ["AGENT_LOG"] + log["task"], "w").write(json.dumps(log))
sys.exit(subprocess.run(command, env=env).returncode)
"""


def test_each_array_task_runs_one_trial_in_its_own_folder(slurm: SlurmCluster, tmp_path: Path):
    sweep = yaml.safe_load((REPO / "wandb/sweeps/lr_rank.yaml").read_text())
    sweep["parameters"] = {"optim.lr": {"values": [1e-3]}, "model.lora_r": {"values": [4, 8]}}
    sweep["command"][sweep["command"].index("configs/mistral_mv.yaml")] = "configs/demo.yaml"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    agent = tmp_path / "wandb"
    agent.write_text(AGENT.format(python=sys.executable))
    agent.chmod(0o755)
    overrides = [f"run.output_dir={tmp_path / 'runs'}", f"data.cache_dir={tmp_path / 'cache'}",
                 "trainer.max_epochs=1", "data.tasks=[ap,sa]", "eval.max_new_tokens=4",
                 "trainer.enable_progress_bar=false"]  # fmt: skip
    env = {"PYTHON": sys.executable, "WANDB": str(agent), "AGENT_LOG": str(tmp_path / "agent-"),
           "TRIAL_OVERRIDES": json.dumps(overrides)}  # fmt: skip
    job = slurm.sbatch(REPO / "slurm/sweep_agent.sbatch", [str(sweep_file)],
                       ["--array=0-1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20"],
                       cwd=REPO, env=env, out=tmp_path / "sweep-%a.out")  # fmt: skip
    for task in (0, 1):
        log = tmp_path / f"sweep-{task}.out"
        assert slurm.wait_done(Job(f"{job.id}_{task}", log)) == "COMPLETED", log.read_text()[-3000:]
        seen = json.loads((tmp_path / f"agent-{task}").read_text())
        assert seen["argv"] == ["agent", "--count", "1", str(sweep_file)]
        assert seen["python"] == sys.prefix  # the job's Python is the one the agent finds
        run_dir = tmp_path / "runs" / f"demo-sweeptrial{task}"
        saved = OmegaConf.load(run_dir / "config.yaml")
        assert saved.model.lora_r == [4, 8][task] and saved.optim.lr == pytest.approx(1e-3)
        assert (run_dir / "wandb_run_id").read_text() == f"sweeptrial{task}"
        assert (run_dir / "status.json").is_file()

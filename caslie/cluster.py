"""The allocation a job runs on: devices per node and nodes, read from SLURM when ``auto``.

``trainer.devices`` and ``trainer.num_nodes`` default to ``auto``. Inside a SLURM job step (``srun``)
they follow the allocation, one task per device: ``--ntasks-per-node`` devices on each of
``--nodes`` nodes. Outside SLURM, ``auto`` is every visible GPU (one CPU process on a CPU machine).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Mapping

log = logging.getLogger(__name__)

AUTO = "auto"

_INTERACTIVE_NAMES = ("bash", "interactive")
"""Job names of an interactive allocation, where Lightning does not treat the job as SLURM's."""


def in_slurm_step(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a task of a SLURM job step (``srun``), as Lightning detects it."""
    return "SLURM_NTASKS" in environ and environ.get("SLURM_JOB_NAME") not in _INTERACTIVE_NAMES


def _first_count(value: str) -> int:
    """``2`` from SLURM's per-node counts such as ``2``, ``2(x3)`` or ``2,1``."""
    match = re.match(r"\d+", value)
    return int(match.group()) if match else 0


def slurm_allocation(environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(tasks per node, nodes) of the SLURM job step, or ``None`` outside one."""
    if not in_slurm_step(environ):
        return None
    nodes = int(environ.get("SLURM_NNODES", environ.get("SLURM_JOB_NUM_NODES", "1")))
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "")
    tasks = _first_count(per_node) or int(environ["SLURM_NTASKS"]) // max(nodes, 1)
    return max(tasks, 1), max(nodes, 1)


def _visible_gpus() -> int:
    import torch  # only a GPU job's `auto` needs it; the config loads without torch otherwise

    return torch.cuda.device_count()


def resolve_devices(accelerator: str, devices: str, num_nodes: str,
                    environ: Mapping[str, str] = os.environ) -> tuple[int, int]:  # fmt: skip
    """(devices per node, nodes) for ``trainer.devices`` and ``trainer.num_nodes``.

    Args:
        accelerator: ``trainer.accelerator``.
        devices: A positive count or ``auto``.
        num_nodes: A positive count or ``auto``.
        environ: The process environment.
    """
    allocation = slurm_allocation(environ)
    if devices == AUTO:
        if allocation is not None:
            n_devices = allocation[0]
        elif accelerator == "cpu":
            n_devices = 1
        else:
            n_devices = max(_visible_gpus(), 1)
    else:
        n_devices = int(devices)
    if num_nodes == AUTO:
        n_nodes = allocation[1] if allocation is not None else 1
    else:
        n_nodes = int(num_nodes)
    return n_devices, n_nodes


def slurm_job_id(environ: Mapping[str, str] = os.environ) -> str | None:
    """The id ``scontrol requeue`` takes (``<array job>_<task>`` for an array task), or ``None``."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    else:
        job = environ.get("SLURM_JOB_ID", "")
    return job if re.fullmatch(r"\d+(_\d+)?", job) else None


def requeue(environ: Mapping[str, str] = os.environ) -> bool:
    """Put this SLURM job back in the queue (``scontrol requeue``); ``False`` when that failed or
    this is no SLURM job. Call it from one rank only."""
    job = slurm_job_id(environ)
    if job is None:
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("could not requeue SLURM job %s: %s", job, err)
        return False
    if done.returncode != 0:
        log.warning("could not requeue SLURM job %s: %s", job, done.stderr.strip())
        return False
    log.warning("requeued SLURM job %s", job)
    return True


def restarted_by_slurm(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this is a requeued run of a SLURM job (``SLURM_RESTART_COUNT`` > 0)."""
    return environ.get("SLURM_RESTART_COUNT", "0") not in ("", "0")

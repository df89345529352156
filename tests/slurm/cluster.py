"""A real one-node SLURM cluster for the SLURM tests: munged, slurmctld and slurmd started as
daemons of this test session under a temporary folder (their own key, socket, ports, state and
logs), and stopped by the pids they wrote, never by name, so nothing else on the machine is touched.

The packages (``slurm-wlm``, ``munge``) are installed with apt when they are missing and this
process may (root); otherwise the tests that need the cluster are skipped, and say why.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
PACKAGES = ("slurm-wlm", "munge")


def install_reason() -> str | None:
    """``None`` when the SLURM daemons are on PATH (installing them with apt if missing and root),
    else why they are not."""
    sbin = ("/usr/sbin", "/sbin")

    def found() -> bool:
        return all(shutil.which(d, path=os.pathsep.join([os.environ.get("PATH", ""), *sbin]))
                   for d in (*DAEMONS, "sbatch"))  # fmt: skip

    if found():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed (and apt-get as root is not available)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):  # fmt: skip
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=900, check=False
        )
        if done.returncode != 0:
            return f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}"
    return None if found() else "slurm-wlm installed but its daemons are not on PATH"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _daemon(name: str) -> str:
    return (
        shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])) or name
    )


@dataclass
class Job:
    """A submitted job: its id and its output file."""

    id: str
    out: Path

    def log(self) -> str:
        return self.out.read_text(errors="replace") if self.out.exists() else ""


@dataclass
class SlurmCluster:
    """One node, one partition, requeue allowed; ``env`` is what every client command needs."""

    root: Path
    cpus: int = 2
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_config(self) -> None:
        host = socket.gethostname().split(".")[0]
        ctld_port, d_port = _free_ports(2)
        memory = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        self.conf.write_text(f"""\
ClusterName=caslietest
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
KillWait=30
MinJobAge=3600
NodeName={host} CPUs={self.cpus} RealMemory={memory} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")

    def start(self) -> None:
        """Start munged, slurmctld and slurmd, and wait until the node takes jobs."""
        self._write_config()
        r = self.root
        key = r / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        (r / "munge").chmod(0o700)
        self._spawn("munged", [_daemon("munged"), "--force", f"--socket={r}/munge/munge.socket",
                               f"--key-file={key}", f"--pid-file={r}/munged.pid",
                               f"--log-file={r}/munged.log", f"--seed-file={r}/munge/seed"],
                    r / "munged.pid")  # fmt: skip
        self._spawn("slurmctld", [_daemon("slurmctld"), "-f", str(self.conf)], r / "slurmctld.pid")
        self._spawn("slurmd", [_daemon("slurmd"), "-f", str(self.conf)], r / "slurmd.pid")
        self.wait_for(lambda: "idle" in self.scontrol("show", "node").lower(), 60,
                      "the node to come up")  # fmt: skip

    def _spawn(self, name: str, cmd: list[str], pid_file: Path) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=60,
                              check=False)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{name} did not start: {done.stderr.strip()} {self.logs(name)}")
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} wrote no pid file: {self.logs(name)}")
            time.sleep(0.2)
        self.pids[name] = int(pid_file.read_text().split()[0])

    def logs(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """Stop the daemons this cluster started (by their pids), newest first."""
        for name in reversed(DAEMONS):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    # ---------------------------------------------------------------------------------- clients

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=60,
                              check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")
        return done.stdout

    def scontrol(self, *args: str) -> str:
        return self.run("scontrol", *args)

    def sbatch(self, script: str | Path, args: Sequence[str] = (), options: Sequence[str] = (),
               cwd: Path | None = None, env: Mapping[str, str] | None = None,
               out: Path | None = None) -> Job:  # fmt: skip
        """Submit ``script args`` with extra ``sbatch`` options; the job's output goes to ``out``."""
        out = out or self.root / f"job-{secrets.token_hex(4)}.out"
        done = subprocess.run(
            ["sbatch", "--parsable", f"--output={out}", *options, str(script), *args],
            capture_output=True, text=True, env={**self.env, **(env or {})}, cwd=cwd, timeout=60,
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"sbatch failed: {done.stderr.strip()}")
        return Job(done.stdout.strip().split(";")[0], out)

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a flat mapping (``JobState``, ``Restarts``, ``ExitCode``...)."""
        text = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", text))

    def state(self, job_id: str) -> str:
        return self.job(job_id).get("JobState", "UNKNOWN")

    def wait_for(self, predicate, timeout: float, what: str, poll: float = 0.5) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(poll)

    def wait_done(self, job: Job, timeout: float = 600) -> str:
        """Wait until the job has ended (releasing a requeued job held for its start time at once);
        returns its final state."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                 "BOOT_FAIL", "DEADLINE", "PREEMPTED"}  # fmt: skip

        def ended() -> bool:
            info = self.job(job.id)
            if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                self.scontrol("update", f"jobid={job.id}", "StartTime=now")
            return info.get("JobState") in final

        self.wait_for(ended, timeout, f"job {job.id} to end; its log:\n{job.log()[-3000:]}", 1.0)
        return self.state(job.id)

    def wait_log(self, job: Job, pattern: str, timeout: float = 300, after: int = 0) -> re.Match:
        """Wait until the job's output (from character ``after``) matches ``pattern``."""
        found: list[re.Match] = []

        def seen() -> bool:
            match = re.search(pattern, job.log()[after:], re.MULTILINE)
            if match:
                found.append(match)
            return bool(match)

        self.wait_for(seen, timeout, f"/{pattern}/ in job {job.id}'s log:\n{job.log()[-3000:]}",
                      0.1)  # fmt: skip
        return found[0]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False

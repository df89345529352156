"""The one-node SLURM cluster shared by the SLURM tests (started once per session)."""

from __future__ import annotations

import pytest

from tests.slurm.cluster import SlurmCluster, install_reason


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """A running one-node cluster; its daemons are stopped by pid at the end of the session."""
    reason = install_reason()
    if reason is not None:
        pytest.skip(f"no SLURM cluster: {reason}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()

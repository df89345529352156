"""W&B stages artifact copies inside the run folder, only while the run is inside the block."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wandb.sdk.artifacts.staging import get_staging_dir

from caslie.wandb_staging import DATA_DIR_ENV, staging_in


def test_wandb_stages_in_the_run_folder_inside_the_block_and_as_before_after(tmp_path):
    before = os.environ[DATA_DIR_ENV]  # conftest points it at a session folder
    with staging_in(tmp_path / "run") as folder:
        staging = Path(get_staging_dir())  # wandb's own answer, as it stages a file
        assert staging == (tmp_path / "run" / "wandb" / "data" / "artifacts" / "staging").resolve()
        assert folder == staging.parents[1] and staging.is_dir()
    assert os.environ[DATA_DIR_ENV] == before
    assert Path(get_staging_dir()).is_relative_to(Path(before).resolve())


def test_an_unset_variable_is_unset_again_also_after_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV)
    with pytest.raises(RuntimeError, match="boom"), staging_in(tmp_path):
        assert os.environ[DATA_DIR_ENV] == str((tmp_path / "wandb" / "data").resolve())
        raise RuntimeError("boom")
    assert DATA_DIR_ENV not in os.environ

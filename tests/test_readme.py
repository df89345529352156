"""The README's walk-through runs as written: install, demo, inspect, print-config, validate, train,
evaluate, export, in a copy of the repository, offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]


def walkthrough() -> str:
    """The commands between the README's walk-through markers."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```\n<!-- /walkthrough -->", text, re.S)
    assert block, "README.md has no walk-through block"
    return block.group(1)


def _copy_of_the_repository(dest: Path) -> Path:
    """The checkout's files (committed or not, ignored ones left out) with their times, so that
    make finds the existing .venv up to date, which is linked in."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=REPO, capture_output=True, check=True).stdout  # fmt: skip
    for name in filter(None, listed.decode().split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(REPO / ".venv")
    return dest


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    copy = _copy_of_the_repository(tmp_path / "caslie")
    env = {**os.environ, "PYTHONPATH": str(copy), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "CASLIE_CACHE": str(tmp_path / "cache")}  # fmt: skip
    done = subprocess.run(["bash", "-c", "set -eo pipefail\n" + walkthrough()], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]

    assert "=== " in done.stdout and "task=sa" in done.stdout  # inspect
    assert re.search(r"^  lr: 0\.01 +# command line$", done.stdout, re.M)  # print-config
    assert re.search(r"^  name: mine +# command line$", done.stdout, re.M)
    assert re.search(r"^  votes: \S+/data/sample/votes +# configs/demo\.yaml$", done.stdout, re.M)
    assert "the config is valid for train" in done.stderr  # validate
    run = copy / "runs" / "mine"  # the config's relative run.output_dir, under the copy
    assert (copy / "runs" / "demo" / "metrics.json").is_file()
    assert json.loads((run / "metrics.json").read_text())["metrics"]["test_ind"]
    assert '"test_ind"' in done.stdout  # evaluate's metrics
    adapter = copy / "exports" / "mine"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {
        p.name for p in adapter.iterdir()
    }

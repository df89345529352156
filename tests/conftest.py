"""Shared fixtures: the offline tiny tokenizer, configs over the shipped sample, row writers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caslie.config import Config, load_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory):
    """Tiny models are built into a per-session cache; W&B never goes online; no hub access."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CASLIE_CACHE", str(tmp_path_factory.mktemp("caslie-cache")))
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_DATA_DIR", str(tmp_path_factory.mktemp("wandb-data")))
    mp.setenv("WANDB_CACHE_DIR", str(tmp_path_factory.mktemp("wandb-cache")))
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    mp.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: any hub call fails at once
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tokenizer():
    """The ``tiny:mistral`` tokenizer, built locally through the AutoTokenizer path."""
    from caslie.offline import load_tokenizer

    return load_tokenizer("tiny:mistral")


@pytest.fixture
def sample_config(tmp_path: Path):
    """Factory: a config over the shipped sample with a private cache folder, plus overrides."""

    def make(*overrides: str) -> Config:
        base = [
            "data.source=sample",
            f"data.votes={REPO / 'data/sample/votes'}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.num_workers=0",
        ]
        return load_config(None, base + list(overrides))

    return make


@pytest.fixture
def sample_rows() -> list[dict]:
    """The shipped sample's raw rows."""
    with (REPO / "data/sample/rows.jsonl").open() as fh:
        return [json.loads(line) for line in fh]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write rows as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

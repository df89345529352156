"""Shared fixtures: the offline tiny tokenizer, configs over the shipped sample, row writers."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import yaml

from caslie.config import Config, load_config
from caslie.data.sample import write_synthetic
from caslie.pretrained import load_tokenizer
from caslie.tasks import TASKS
from tests.slurm.cluster import SlurmCluster, install_reason
from train import run

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu``-marked tests run where a CUDA device is (benchmarks/gpu_check.sh runs them)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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


class CrashAt(L.Callback):
    """Die before the batch that would make optimiser step ``step + 1`` (a preemption, a node
    failure), raising ``RuntimeError(message)``."""

    def __init__(self, step: int, message: str = "preempted"):
        self.step, self.message = step, message

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError(self.message)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One trained demo run (config, result), shared by the tests that read a finished run."""
    tmp = tmp_path_factory.mktemp("demo")
    # Constrained decoding: every answer parses, so every task has metrics and a confusion matrix.
    cfg = demo_config(
        tmp, "trainer.max_epochs=3", "logger.wandb.log_predictions=8", "eval.constrained=true"
    )
    return cfg, run(cfg)


@pytest.fixture(scope="session")
def clip_run(tmp_path_factory):
    """One trained FashionCLIP run on ``tiny:clip`` (config, result), for the tests that read it."""
    tmp = tmp_path_factory.mktemp("clip")
    cfg = clip_config(
        tmp, "trainer.max_epochs=1", "optim.lr=1e-3", f"data.cache_dir={tmp / 'cache'}"
    )
    return cfg, run(cfg)


def demo_config(tmp: Path, *overrides: str) -> Config:
    """``configs/demo.yaml`` writing under ``tmp``, with the shipped votes and no progress bar."""
    base = [f"run.output_dir={tmp / 'runs'}", f"data.cache_dir={tmp / 'cache'}",
            f"data.votes={REPO / 'data/sample/votes'}", "trainer.enable_progress_bar=false"]  # fmt: skip
    return load_config(REPO / "configs/demo.yaml", base + list(overrides))


def cqe_config(tmp: Path, *overrides: str) -> Config:
    """``configs/cqe/demo.yaml`` (three tiny voters) voting into ``tmp``."""
    return load_config(REPO / "configs/cqe/demo.yaml",
                       [f"data.votes={tmp / 'votes'}", f"data.cache_dir={tmp / 'c'}", *overrides])  # fmt: skip


def clip_config(tmp: Path, *overrides: str) -> Config:
    """``configs/fashionclip.yaml`` with ``tiny:clip`` on the sample, writing under ``tmp``."""
    return load_config(REPO / "configs/fashionclip.yaml", [
        "model.name_or_path=tiny:clip", "data.source=sample", f"run.output_dir={tmp / 'runs'}",
        "data.num_workers=0", "trainer.accelerator=cpu", "logger.wandb.mode=disabled",
        "trainer.enable_progress_bar=false", "optim.effective_batch_size=16", "optim.micro_batch_size=16",
        *overrides,
    ])  # fmt: skip


# Golden prompt cases: one row per task, the input and options as the released models saw them
# after UIA fusion (json.dumps with Python defaults: ASCII escapes, ", " separators).

HEAD = (
    "[INST] Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n"
)
SPLIT_MAP = load_config().data.split_map


def golden_row(task: str, inp, options, output: str, n_images: int) -> dict:
    return {
        "task": TASKS[task].name, "split": "test", "instruction": TASKS[task].instruction,
        "input": json.dumps(inp), "options": None if options is None else json.dumps(options),
        "output": output, "images": json.dumps([f"i{j}.png" for j in range(n_images)]),
        "caption_info": json.dumps([f"cap {j} \u00e9" for j in range(n_images)]),
    }  # fmt: skip


GOLDEN_CASES = {
    "ap": (
        golden_row("ap", {"question": "Is it 20V?", "document": "20V MAX"}, [], "yes", 1),
        '{"question": "Is it 20V?", "document": "20V MAX", "product information extracted from image": "cap 0 \\u00e9"}',
        "[]",
    ),
    "cc": (
        golden_row("cc", {"title": "Saw"}, ["A: Saws", "B: Drills"], "A", 1),
        '{"title": "Saw", "product information extracted from image": "cap 0 \\u00e9"}',
        '["A: Saws", "B: Drills"]',
    ),
    "prp": (
        golden_row(
            "prp",
            {"product 1": "Drill", "product 2": "Bits"},
            ["A: buy", "B: view", "C: similar"],
            "B",
            2,
        ),
        '{"product 1": "Drill", "product 2": "Bits", "product 1 information extracted from image": '
        '"cap 0 \\u00e9", "product 2 information extracted from image": "cap 1 \\u00e9"}',
        '["A: buy", "B: view", "C: similar"]',
    ),
    "psi": (
        golden_row("psi", {"query": "q", "product title": "t"}, None, "no", 1),
        '{"query": "q", "product title": "t", "product information extracted from image": "cap 0 \\u00e9"}',
        None,
    ),
    "mpc": (
        golden_row(
            "mpc", {"query": "q", "product title": "t"}, ["A: E", "B: S", "C: C", "D: I"], "D", 1
        ),
        '{"query": "q", "product title": "t", "product information extracted from image": "cap 0 \\u00e9"}',
        '["A: E", "B: S", "C: C", "D: I"]',
    ),
    "sa": (
        golden_row("sa", {"review": 'Great "tool"'}, ["A: very positive", "B: positive"], "A", 1),
        '{"review": "Great \\"tool\\"", "product information extracted from image": "cap 0 \\u00e9"}',
        '["A: very positive", "B: positive"]',
    ),
    "sr": (
        golden_row("sr", ["1st: Drill", "2nd: Saw"], ["A: Bits", "B: Blade"], "B", 4),
        '["1st: Drill cap 0 \\u00e9", "2nd: Saw cap 1 \\u00e9"]',
        '["A: Bits cap 2 \\u00e9", "B: Blade cap 3 \\u00e9"]',
    ),
}


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """A running one-node SLURM cluster (``tests/slurm/cluster.py``) for the tests under
    ``tests/slurm/``; its daemons are stopped by pid at the end of the session."""
    reason = install_reason()
    if reason is not None:
        pytest.skip(f"no SLURM cluster: {reason}")
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def write_grid(tmp_path: Path, body: str) -> Path:
    """A grid file over ``configs/demo.yaml`` whose runs go under ``tmp_path/runs``."""
    path = tmp_path / "grid.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'runs'}\nconfig: {REPO / 'configs/demo.yaml'}\n" + body
    )
    return path


def fusion_grid(tmp_path: Path, name: str) -> Path:
    """A one-epoch grid of two runs on the sample: text only (``text``) and MV (``mv``)."""
    return write_grid(
        tmp_path,
        f"""name: {name}
overrides: [trainer.max_epochs=1, logger.wandb.mode=disabled, data.cache_dir={tmp_path / "cache"},
            eval.max_new_tokens=4]
axes:
  fusion:
    text: [data.fusion=none]
    mv: [data.fusion=mv]
""",
    )


def write_finished_run(root: Path, name: str, identity: dict, scores: dict[str, dict[str, float]],
                       caption_used: dict | None = None) -> Path:  # fmt: skip
    """A run folder as ``train.py`` leaves it for ``caslie report``: ``metrics.json`` with the
    identity and, per split (``test_ind``...), each task's primary metric in its own field."""
    metrics = {
        split: {t: {"n": 8, "failed": 0, "primary": TASKS[t].primary, TASKS[t].primary: v}
                for t, v in per_task.items()}
        for split, per_task in scores.items()
    }  # fmt: skip
    folder = root / name
    folder.mkdir(parents=True)
    body = {"identity": {"model_kind": "lora", "tasks": list(TASKS), **identity},
            "metrics": metrics, "caption_used_pct": caption_used or {}}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(body))
    return folder


def demo_grid(tmp_path: Path) -> Path:
    """The shipped ``configs/grids/demo.yaml`` on synthetic rows of the size ``make demo`` writes,
    everything under ``tmp_path``."""
    line = next(x for x in (REPO / "Makefile").read_text().splitlines()
                if "caslie.data.sample synthetic" in x).split()  # fmt: skip
    sizes = {"train_per_task": int(line[line.index("--train-per-task") + 1]),
             "eval_per_task": int(line[line.index("--eval-per-task") + 1])}  # fmt: skip
    write_synthetic(tmp_path / "synthetic", **sizes)
    spec = yaml.safe_load((REPO / "configs/grids/demo.yaml").read_text())
    spec["config"] = str((REPO / "configs/grids" / spec["config"]).resolve())
    spec["output_dir"] = str(tmp_path / "runs")
    spec["overrides"] += [f"data.source={tmp_path / 'synthetic/rows.jsonl'}",
                          f"data.votes={tmp_path / 'synthetic/votes'}",
                          f"data.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path

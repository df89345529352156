"""Every way a model, tokenizer, processor or dataset can be missing ends in one line.

The hub's own errors come from the libraries themselves: ``huggingface_hub`` and ``transformers``
talk to :class:`~tests.fake_hub.FakeHub` on 127.0.0.1 (no network), which answers as the hub does
for a gated repo, a missing repo, revision or file. The offline cases run with
``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME``. Entry points run as subprocesses, as a user runs
them: exit code 2, one ``<program>: error:`` line naming the id and the remedy, no traceback.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import hf_hub_download

from caslie.errors import HubUnavailableError, UnavailableError
from caslie.hub import Wanted, gap, unavailable
from caslie.pretrained import Checkpoint
from caslie.tiny import ensure_tiny
from tests.fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
MISTRAL = "mistralai/Mistral-7B-Instruct-v0.3"  # configs/mistral_mv.yaml's own id


def _library_error(tmp_path: Path, **kwargs) -> Exception:
    """What ``hf_hub_download`` raises for ``org/name``'s config.json (``kwargs``: its options)."""
    with pytest.raises(Exception) as caught:
        hf_hub_download("org/name", "config.json", cache_dir=tmp_path / "cache", **kwargs)
    return caught.value


WANTED = Wanted("org/name", "model.name_or_path", "config", revision="v9")

HUB_ERRORS = {
    "GatedRepo": ["gated repo", "https://huggingface.co/org/name", "hf auth login"],
    "RepoNotFound": ["no such model on the Hugging Face Hub", "check the id", "hf auth login"],
    "RevisionNotFound": ["no revision 'v9'", "set model.revision"],
    "EntryNotFound": ["the repo has no config.json"],
}


@pytest.mark.parametrize("code", sorted(HUB_ERRORS))
def test_each_hub_error_becomes_one_line_naming_id_revision_and_remedy(code, tmp_path):
    with FakeHub(error=code) as hub:
        err = _library_error(tmp_path, revision="v9", endpoint=hub.endpoint)
    missing = unavailable(err, WANTED)
    assert type(missing) is UnavailableError
    text = str(missing)
    assert "\n" not in text
    assert text.startswith(
        "cannot load the config of model.name_or_path 'org/name' (revision 'v9'): "
    )
    assert all(part in text for part in HUB_ERRORS[code]), text


def test_not_cached_offline_says_how_to_download_it(tmp_path, monkeypatch):
    err = _library_error(tmp_path, revision="v9", local_files_only=True)  # what offline mode raises
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = str(unavailable(err, WANTED))
    assert "not in the local hub cache" in text and "HF_HUB_OFFLINE=1 forbids downloading" in text
    assert "`hf download org/name --revision v9`" in text and "unset HF_HUB_OFFLINE" in text


def test_not_cached_and_online_is_the_hub_out_of_reach(tmp_path, monkeypatch):
    err = _library_error(tmp_path, local_files_only=True)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    missing = unavailable(err, WANTED)
    assert isinstance(missing, HubUnavailableError) and isinstance(missing, UnavailableError)
    assert "cannot reach the Hugging Face Hub to fetch model.name_or_path 'org/name'" in str(
        missing
    )


def test_an_unreachable_hub_is_worded_in_the_same_scheme():
    # conftest points HF_ENDPOINT at a closed port
    with pytest.raises(HubUnavailableError) as err:
        Checkpoint("org/name", revision="v2", what="model.name_or_path").path()
    text = str(err.value)
    assert "model.name_or_path 'org/name' (revision 'v2')" in text
    assert "`hf download org/name --revision v2`" in text and "local folder" in text


def test_what_a_part_needs_and_what_counts_as_known_missing():
    assert gap({"config.json"}, "weights") == "no weight file (*.safetensors, *.bin)"
    assert gap({"model.safetensors"}, "weights") == "no config.json"
    assert gap({"config.json", "model-00001-of-00002.safetensors"}, "weights") is None
    assert gap({"tokenizer_config.json"}, "tokenizer").startswith("no tokenizer file")
    assert gap({"tokenizer.model"}, "tokenizer") is None
    assert gap({"tokenizer.json"}, "processor").startswith("no processor config")
    # In the hub cache, a file not downloaded is only missing when the hub said so.
    assert gap(set(), "tokenizer", absent={"added_tokens.json"}) is None
    assert gap(set(), "tokenizer", absent={"tokenizer.json"}).startswith("no tokenizer file")


def test_errors_about_something_else_are_left_to_the_caller(tmp_path):
    folder = tmp_path / "complete"
    shutil.copytree(ensure_tiny("mistral"), folder)
    broken = ValueError("Unrecognized configuration class")
    assert unavailable(broken, Wanted(str(folder), "model", "weights", folder=folder)) is None
    assert unavailable(broken, Wanted("org/name", "model", "weights")) is None


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The test's environment with an empty hub cache under ``tmp_path``, offline unless ``extra``
    says otherwise (``HF_HUB_OFFLINE=""``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    hf = tmp_path / "hf"
    env |= {"HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"), "HF_HUB_OFFLINE": "1",
            "HF_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(REPO)}  # fmt: skip
    env |= extra
    return {k: v for k, v in env.items() if v}


def _one_line(args: list[str], env: dict[str, str], program: str, *expected: str) -> str:
    """Run ``args``; it exits 2 with one ``<program>: error:`` line holding ``expected``."""
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith(f"{program}: error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert all(e in lines[0] for e in expected), lines[0]
    return lines[0]


def _train(tmp_path: Path, config: str, *overrides: str) -> list[str]:
    return ["train.py", "--config", config, f"run.output_dir={tmp_path / 'runs'}",
            f"data.cache_dir={tmp_path / 'cache'}", "logger.wandb.mode=disabled",
            "trainer.enable_progress_bar=false", *overrides]  # fmt: skip


def _export_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model:\n  name_or_path: org/name\n")
    # A checkpoint that passes export's checks, so the base model is what turns out missing.
    (run / "checkpoints").mkdir()
    adapter = {"model.base_model.model.lm_head.lora_A.default.weight": torch.zeros(1, 1)}
    torch.save({"state_dict": adapter}, run / "checkpoints" / "best.ckpt")
    return run


OFFLINE = "HF_HUB_OFFLINE=1 forbids downloading it"
OFFLINE_CASES = {
    "train.py, the config's own id": (
        lambda t: _train(t, "configs/mistral_mv.yaml"), "train.py",
        [f"tokenizer of model.name_or_path '{MISTRAL}'", OFFLINE, f"hf download {MISTRAL}`"]),
    "train.py, a made-up id at a revision": (
        lambda t: _train(t, "configs/demo.yaml", "model.name_or_path=org/name", "model.revision=v2"),
        "train.py", ["'org/name' (revision 'v2')", OFFLINE, "hf download org/name --revision v2`"]),
    "train.py, FashionCLIP's CLIP": (
        lambda t: _train(t, "configs/fashionclip.yaml", "model.name_or_path=org/clip",
                         "data.source=sample"), "train.py", ["CLIP model 'org/clip'", OFFLINE]),
    "train.py, a hub dataset": (
        lambda t: _train(t, "configs/demo.yaml", "data.source=org/data"), "train.py",
        ["cannot load dataset 'org/data'", "not in the local datasets cache", OFFLINE,
         "set data.source to a local"]),
    "caslie caption": (
        lambda t: ["-m", "caslie.cli", "caption", "--config", "configs/caption/demo.yaml",
                   "caption.model=org/vlm", f"data.captions={t / 'captions'}"], "caslie",
        ["captioning model 'org/vlm'", OFFLINE]),
    "caslie vote": (
        lambda t: ["-m", "caslie.cli", "vote", "--config", "configs/cqe/demo.yaml",
                   "cqe.models.tiny-llama=org/voter", "data.voters=[tiny-llama]",
                   f"data.votes={t / 'votes'}"], "caslie", ["voter 'tiny-llama' 'org/voter'", OFFLINE]),
    "caslie predict": (  # its train.py process prints the line; caslie passes its exit code on
        lambda t: ["-m", "caslie.cli", "predict", "--config", "configs/demo.yaml", "--model",
                   "org/name", f"run.output_dir={t / 'runs'}", "logger.wandb.mode=disabled"],
        "train.py", ["model.name_or_path 'org/name'", OFFLINE]),
    "caslie export": (
        lambda t: ["-m", "caslie.cli", "export", "--run", str(_export_run(t)), "--out",
                   str(t / "out")], "caslie", ["model.name_or_path 'org/name'", OFFLINE]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(OFFLINE_CASES))
def test_offline_and_not_cached_is_one_line_from_every_entry_point(case, tmp_path):
    args, program, expected = OFFLINE_CASES[case]
    _one_line(args(tmp_path), _env(tmp_path), program, *expected)


@pytest.mark.slow
def test_transformers_offline_switch_is_named_too(tmp_path):
    env = _env(tmp_path, HF_HUB_OFFLINE="", TRANSFORMERS_OFFLINE="1")
    _one_line(_train(tmp_path, "configs/demo.yaml", "model.name_or_path=org/name"), env,
              "train.py", "'org/name'", "TRANSFORMERS_OFFLINE=1 forbids downloading it")  # fmt: skip


HUB_CASES = {
    "gated model": ("GatedRepo", [], ["tokenizer of model.name_or_path 'org/name'", "gated repo",
                                      "hf auth login"]),
    "no such model": ("RepoNotFound", [], ["'org/name'", "no such model", "check the id"]),
    "no such revision": ("RevisionNotFound", ["model.revision=v9"],
                         ["'org/name' (revision 'v9')", "no revision 'v9'", "set model.revision"]),
    "gated dataset": ("GatedRepo", ["model.name_or_path=tiny:mistral", "data.source=org/data"],
                      ["dataset 'org/data'", "gated repo", "huggingface.co/datasets/org/data"]),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(HUB_CASES))
def test_hub_errors_are_one_line_from_train_py(case, tmp_path):
    code, overrides, expected = HUB_CASES[case]
    with FakeHub(error=code) as hub:
        env = _env(tmp_path, HF_HUB_OFFLINE="", HF_ENDPOINT=hub.endpoint)
        args = _train(tmp_path, "configs/demo.yaml", "model.name_or_path=org/name", *overrides)
        _one_line(args, env, "train.py", *expected)


REPO_FILES = {
    "model.safetensors": "weights of model.name_or_path 'org/name': the repo has no weight file",
    "tokenizer.json": "tokenizer of model.name_or_path 'org/name': the repo has no tokenizer file",
    "config.json": "config of model.name_or_path 'org/name': the repo has no config.json",
}


@pytest.mark.slow
@pytest.mark.parametrize("lacking", sorted(REPO_FILES))
def test_a_hub_repo_without_a_file_it_needs_is_one_line(lacking, tmp_path):
    served = tmp_path / "served"
    shutil.copytree(ensure_tiny("mistral"), served)
    (served / lacking).unlink()
    with FakeHub(folder=served) as hub:
        env = _env(tmp_path, HF_HUB_OFFLINE="", HF_ENDPOINT=hub.endpoint)
        args = _train(tmp_path, "configs/demo.yaml", "model.name_or_path=org/name",
                      "trainer.max_steps=1", "data.max_rows_per_task=2")  # fmt: skip
        _one_line(args, env, "train.py", REPO_FILES[lacking])

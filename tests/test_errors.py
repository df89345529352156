"""One error family: every entry point stops on every kind of bad input with one line and exit 2.

Each case runs an entry point for real (``train.py`` and the ``caslie`` commands, in process) on one
bad input; a case passes when the command returns 2 and prints ``<program>: error: <message>``
naming what to fix, without a traceback. Two cases run as subprocesses, as a user would.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_jsonl

import train
from caslie import errors
from caslie.cli import main as caslie_main
from caslie.tiny import ensure_tiny

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def bad_inputs(tmp_path: Path, sample_rows) -> dict[str, str]:
    """Files of each bad kind, by name."""
    rows = [dict(r) for r in sample_rows[:4]]
    del rows[2]["output"]
    corrupt = tmp_path / "corrupt-captions"
    corrupt.mkdir()
    (corrupt / "a.jsonl").write_text('{"row_id": "x", "image_index": 0}\nnot json\n{"x": 1}\n')
    (tmp_path / "run-without-checkpoints").mkdir()
    (tmp_path / "run-without-checkpoints" / "config.yaml").write_text(
        "model:\n  name_or_path: tiny:mistral\n"
    )
    return {
        "rows": str(write_jsonl(tmp_path / "bad" / "rows.jsonl", rows)),
        "corrupt_cache": str(corrupt),
        "no_cache": str(tmp_path / "no-such-cache"),
        "no_votes": str(tmp_path / "no-such-votes"),
        "no_ckpt": str(tmp_path / "no-such.ckpt"),
        "no_file": str(tmp_path / "no-such.json"),
        "run": str(tmp_path / "run-without-checkpoints"),
        "empty": str(_mkdir(tmp_path / "empty-model")),
        "junk": str(_write(tmp_path / "junk.ckpt", "not a checkpoint")),
        "tmp": str(tmp_path),
    }


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _demo(tmp: str, *overrides: str) -> list[str]:
    return ["--config", "configs/demo.yaml", f"run.output_dir={tmp}/runs",
            f"data.cache_dir={tmp}/cache", "logger.wandb.mode=disabled", *overrides]  # fmt: skip


TRAIN_CASES = {
    "unknown key": (["optim.learning_rate=1"], "unknown config key 'optim.learning_rate'"),
    "bad value": (["data.fusion=sometimes"], "unknown data.fusion 'sometimes'"),
    "bad row": (["data.source={rows}", "data.fusion=none"], "field 'output': missing"),
    "missing caption cache": (["data.captions={no_cache}", "data.fusion=uia"], "does not exist"),
    "corrupt caption cache": (["data.captions={corrupt_cache}", "data.fusion=uia"], "corrupt cache entry"),
    "missing votes": (["data.votes={no_votes}"], "vote cache"),
    "hub model offline": (["model.name_or_path=org/model"], "cannot reach the Hugging Face Hub"),
    "missing model path": (["model.name_or_path=./no/such/model"], "does not exist"),
    "unknown tiny model": (["model.name_or_path=tiny:nope"], "unknown tiny model 'tiny:nope'"),
    "missing checkpoint": (["trainer.ckpt_path={no_ckpt}"], "does not exist"),
    "bad trainer setting": (["trainer.strategy=bogus"], "trainer.* settings"),
    "not a CLIP model": (["model.kind=fashionclip"], "needs a CLIP checkpoint"),
    "empty model folder": (["model.name_or_path={empty}"], "cannot load the tokenizer of model.name_or_path"),
}  # fmt: skip

CASLIE_CASES = {
    "inspect unknown key": (["inspect", "--config", "configs/demo.yaml", "optim.lr_=1"], "did you mean 'optim.lr'"),
    "inspect unknown task": (["inspect", "--config", "configs/demo.yaml", "data.tasks=[nope]"], "unknown task 'nope'"),
    "inspect bad row": (["inspect", "--config", "configs/demo.yaml", "data.source={rows}"], "field 'output'"),
    "inspect missing votes": (["inspect", "--config", "configs/demo.yaml", "data.votes={no_votes}"], "vote cache"),
    "inspect corrupt cache": (["inspect", "--config", "configs/demo.yaml", "data.captions={corrupt_cache}",
                               "data.fusion=uia"], "corrupt cache entry"),  # fmt: skip
    "caption into the dataset": (["caption", "--config", "configs/caption/demo.yaml", "data.captions=dataset"],
                                 "writes a caption cache"),  # fmt: skip
    "caption bad source": (["caption", "--config", "configs/caption/demo.yaml", "data.source={no_file}"],
                           "neither an existing file"),  # fmt: skip
    "vote unknown voter": (["vote", "--config", "configs/cqe/demo.yaml", "data.voters=[nobody]"],
                           "no checkpoint in cqe.models"),  # fmt: skip
    "vote missing caption cache": (["vote", "--config", "configs/cqe/demo.yaml", "data.captions={no_cache}",
                                    "data.votes={tmp}/votes"], "does not exist"),  # fmt: skip
    "evaluate missing predictions": (["evaluate", "--data", "sample", "--predictions", "{no_file}"],
                                     "no-such.json"),  # fmt: skip
    "evaluate bad rows": (["evaluate", "--data", "{rows}", "--predictions", "{no_file}"], "field 'output'"),
    "export missing run": (["export", "--run", "{no_votes}", "--out", "{tmp}/out"], "is not a run folder"),
    "export missing checkpoint": (["export", "--run", "{run}", "--out", "{tmp}/out"], "does not exist"),
    "export junk checkpoint": (["export", "--run", "{run}", "--out", "{tmp}/out", "--checkpoint", "{junk}"],
                               "not a readable checkpoint"),
    "predict without a model": (["predict"], "needs --config"),
}  # fmt: skip


def _one_error_line(err: str, program: str, expected: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"{program}: error:")]
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("case", sorted(TRAIN_CASES))
def test_train_py_prints_one_line_for_each_kind_of_bad_input(case, bad_inputs, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides, expected = TRAIN_CASES[case]
    code = train.main(_demo(bad_inputs["tmp"], *(o.format(**bad_inputs) for o in overrides)))
    assert code == errors.EXIT_USER_ERROR
    _one_error_line(capsys.readouterr().err, "train.py", expected)


@pytest.mark.parametrize("case", sorted(CASLIE_CASES))
def test_caslie_commands_print_one_line_for_each_kind_of_bad_input(
    case, bad_inputs, capsys, monkeypatch
):
    monkeypatch.chdir(REPO)
    args, expected = CASLIE_CASES[case]
    code = caslie_main([a.format(**bad_inputs) for a in args])
    assert code == errors.EXIT_USER_ERROR
    _one_error_line(capsys.readouterr().err, "caslie", expected)


FOLDER_LACKS = {
    "weights": (["model.safetensors"], "weights", "the folder has no weight file (*.safetensors"),
    "tokenizer": (["tokenizer.json"], "tokenizer", "the folder has no tokenizer file (tokenizer.json"),
    "config.json": (["config.json"], "config", "the folder has no config.json"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FOLDER_LACKS))
def test_a_model_folder_without_a_part_names_the_folder_and_what_it_lacks(
    case, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(REPO)
    removed, part, expected = FOLDER_LACKS[case]
    folder = tmp_path / "saved-model"
    shutil.copytree(ensure_tiny("mistral"), folder)
    for name in removed:
        (folder / name).unlink()
    code = train.main(_demo(str(tmp_path), f"model.name_or_path={folder}", "trainer.max_steps=1"))
    assert code == errors.EXIT_USER_ERROR
    line = _one_error_line(capsys.readouterr().err, "train.py", expected)
    assert f"cannot load the {part} of model.name_or_path '{folder}': " in line
    assert "save the complete model there" in line


def test_every_user_error_derives_from_the_base():
    user_errors = [
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type)
        and issubclass(obj, Exception)
        and obj.__module__ == errors.__name__
    ]
    assert len(user_errors) >= 10
    assert all(issubclass(e, errors.CaslieError) for e in user_errors)


@pytest.mark.slow
def test_as_subprocesses_no_traceback_reaches_the_user(bad_inputs):
    run = subprocess.run(
        [sys.executable, "train.py", *_demo(bad_inputs["tmp"], f"data.captions={bad_inputs['no_cache']}",
                                            "data.fusion=uia")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2
    _one_error_line(run.stderr, "train.py", "caption cache")
    vote = subprocess.run(
        [sys.executable, "-m", "caslie.cli", "vote", "--config", "configs/cqe/demo.yaml",
         "cqe.mode=guess"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert vote.returncode == 2
    _one_error_line(vote.stderr, "caslie", "cqe.mode must be 'score' or 'generate'")


@pytest.mark.slow
def test_a_data_error_under_ddp_stops_every_rank_without_a_traceback(bad_inputs):
    run = subprocess.run(
        [sys.executable, "train.py", *_demo(bad_inputs["tmp"], f"data.votes={bad_inputs['no_votes']}",
                                            "trainer.devices=2", "trainer.strategy=ddp",
                                            "optim.micro_batch_size=4")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "train.py: error:" in run.stderr and "vote cache" in run.stderr

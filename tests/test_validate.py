"""--validate: every problem that shows before a model loads, each naming its key and path or id;
exit 0 or 2 from train.py and the caslie commands that take a config."""

import json
from pathlib import Path

import pytest

from caslie.cli import main as caslie_main
from caslie.config import load_config
from caslie.config_paths import REPO_ROOT
from caslie.validate import validate
from train import main as train_main

DEMO = REPO_ROOT / "configs" / "demo.yaml"
CQE_DEMO = REPO_ROOT / "configs" / "cqe" / "demo.yaml"
CAPTION_DEMO = REPO_ROOT / "configs" / "caption" / "demo.yaml"


@pytest.fixture(autouse=True)
def _no_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test reaches for the network
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))


def _demo(tmp_path, *overrides):
    return load_config(DEMO, [f"run.output_dir={tmp_path / 'runs'}", *overrides])


@pytest.mark.parametrize("command", ["train", "predict", "inspect"])
def test_the_demo_is_valid(tmp_path, command):
    assert validate(_demo(tmp_path), command) == []


def test_configs_for_caption_and_vote_demos_are_valid(tmp_path):
    assert validate(load_config(CAPTION_DEMO, [f"data.captions={tmp_path / 'c'}"]), "caption") == []
    assert validate(load_config(CQE_DEMO, [f"data.votes={tmp_path / 'v'}"]), "vote") == []


def test_every_problem_is_reported_with_its_key_and_absolute_path(tmp_path):
    (tmp_path / "blocker").write_text("a file where a folder should be")
    (tmp_path / "model").mkdir()  # a folder without config.json
    cfg = _demo(tmp_path, f"data.votes={tmp_path / 'no-votes'}", f"data.image_root={tmp_path / 'img'}",
                "trainer.strategy=dpp", f"trainer.ckpt_path={tmp_path / 'x.ckpt'}",
                f"data.cache_dir={tmp_path / 'blocker' / 'cache'}",
                f"model.name_or_path={tmp_path / 'model'}", "model.tokenizer=tiny:nope")  # fmt: skip
    problems = validate(cfg, "train")
    expected = [
        f"data.image_root: {tmp_path / 'img'} does not exist",
        f"data.votes: vote cache {tmp_path / 'no-votes'} does not exist",
        f"data.cache_dir: {tmp_path / 'blocker' / 'cache'} cannot be created",
        "trainer.strategy: Lightning has no strategy 'dpp'",
        f"trainer.ckpt_path: {tmp_path / 'x.ckpt'} does not exist",
        f"model.name_or_path: {tmp_path / 'model'} has no config.json",
        "model.tokenizer: unknown tiny model 'tiny:nope'",
    ]
    assert len(problems) == len(expected)
    for want, got in zip(expected, problems, strict=True):
        assert got.startswith(want)


def test_votes_missing_for_a_voter_name_the_voter_and_the_fill_command(tmp_path):
    (tmp_path / "votes" / "llama-3.2-3b-instruct").mkdir(parents=True)
    [problem] = validate(_demo(tmp_path, f"data.votes={tmp_path / 'votes'}",
                               "data.voters=[llama-3.2-3b-instruct,phi-3.5-mini-instruct]"), "train")  # fmt: skip
    assert "has no votes of phi-3.5-mini-instruct" in problem and "caslie vote --config" in problem


def test_a_hub_id_not_in_the_offline_cache(tmp_path):
    [problem] = validate(_demo(tmp_path, "model.name_or_path=org/not-cached"), "train")
    assert problem.startswith("model.name_or_path: 'org/not-cached' is not in the local hub cache")
    (tmp_path / "hub" / "models--org--not-cached").mkdir(parents=True)
    assert validate(_demo(tmp_path, "model.name_or_path=org/not-cached"), "train") == []


def test_vote_and_caption_need_their_output_caches(tmp_path):
    assert validate(load_config(CQE_DEMO, ["data.votes=null"]), "vote") == [
        "data.votes: not set; name the vote cache folder the votes go to"]  # fmt: skip
    cfg = load_config(CQE_DEMO, [f"data.votes={tmp_path / 'v'}", "data.voters=[tiny-llama,other]"])
    assert validate(cfg, "vote") == ["data.voters: other not in cqe.models (voter -> checkpoint)"]


def test_train_py_validate_exits_0_or_2_and_trains_nothing(tmp_path, capsys):
    common = ["--config", str(DEMO), f"run.output_dir={tmp_path / 'runs'}"]
    assert train_main([*common, "--validate"]) == 0
    assert "the config is valid for train" in capsys.readouterr().err
    assert train_main(["--validate", "trainer.strategy=dpp", *common, "data.votes=nowhere"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("train.py: error: ") for line in err)
    assert not (tmp_path / "runs").exists()


def test_train_py_print_config_shows_space_separated_overrides_and_exits(tmp_path, capsys):
    args = ["--optim.lr", "3e-4", "--config", str(DEMO), "--print-config",
            f"run.output_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.0003" in out and "# command line" in out
    assert not (tmp_path / "runs").exists()


def test_train_py_suggests_for_an_unknown_option(capsys):
    assert train_main(["--config", str(DEMO), "--learning_rate", "1e-4", "--validate"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["inspect", "caption", "vote", "predict"])
def test_caslie_commands_take_both_flags(tmp_path, capsys, command):
    config = {"caption": CAPTION_DEMO, "vote": CQE_DEMO}.get(command, DEMO)
    out = {"caption": f"data.captions={tmp_path / 'c'}", "vote": f"data.votes={tmp_path / 'v'}"}
    args = [command, "--config", str(config), f"run.output_dir={tmp_path / 'runs'}"]
    args += [out[command]] if command in out else []
    assert caslie_main([*args, "--validate"]) == 0, capsys.readouterr().err
    assert caslie_main([*args, "--print-config", "optim.lr=0.25"]) == 0
    assert "  lr: 0.25" in capsys.readouterr().out
    assert caslie_main([*args, "--validate", "data.image_root=/nonexistent/images"]) == 2
    assert "data.image_root: /nonexistent/images does not exist" in capsys.readouterr().err


def test_overrides_may_follow_options_that_take_several_values(tmp_path, capsys):
    args = ["vote", "--dry-run", "--splits", "val", "test_ind", f"data.votes={tmp_path / 'v'}",
            "--tasks", "sa", "prp", "data.max_rows_per_task=1", "--config", str(CQE_DEMO),
            "--data.voters", "[tiny-llama]"]  # fmt: skip
    assert caslie_main(args) == 0
    items = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(i["task"], i["split"]) for i in items} == {
        (t, s) for t in ("sa", "prp") for s in ("val", "test_ind")}  # fmt: skip
    assert {i["voter"] for i in items} == {"tiny-llama"}
    assert not Path(tmp_path / "v").exists()

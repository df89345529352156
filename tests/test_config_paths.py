"""Relative paths in a config: file and default values against the repository root, command-line
values against the current directory, whichever directory the command runs from."""

from pathlib import Path

import pytest

from caslie.cli import main as caslie_main
from caslie.config import load_config
from caslie.config_paths import REPO_ROOT, looks_like_path
from caslie.errors import CoverageError

DEMO = REPO_ROOT / "configs" / "demo.yaml"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A working directory outside the repository."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_file_and_default_paths_resolve_against_the_repository_root(elsewhere):
    cfg = load_config(DEMO)
    assert cfg.data.votes == str(REPO_ROOT / "data" / "sample" / "votes")  # set in demo.yaml
    assert cfg.run.output_dir == str(REPO_ROOT / "runs")  # set in base.yaml
    assert cfg.data.cache_dir == str(REPO_ROOT / ".cache" / "caslie")  # the default
    assert Path(cfg.data.votes).is_dir()


def test_command_line_paths_resolve_against_the_current_directory(elsewhere):
    cfg = load_config(DEMO, ["data.votes=my/votes", "--run.output_dir", "out"])
    assert cfg.data.votes == str(elsewhere / "my" / "votes")
    assert cfg.run.output_dir == str(elsewhere / "out")


def test_the_same_relative_path_in_a_config_file_outside_the_repository(elsewhere):
    (elsewhere / "mine.yaml").write_text(f"base: [{DEMO}]\ndata:\n  votes: data/sample/votes\n")
    assert load_config(elsewhere / "mine.yaml").data.votes == str(REPO_ROOT / "data/sample/votes")


def test_words_ids_and_tiny_models_are_not_paths(elsewhere):
    cfg = load_config(DEMO, ["trainer.ckpt_path=last", "data.captions=dataset",
                             "caption.model=org/name", "model.tokenizer=tiny:llama"])  # fmt: skip
    assert (cfg.data.source, cfg.data.captions, cfg.trainer.ckpt_path) == (
        "sample",
        "dataset",
        "last",
    )
    assert (cfg.caption.model, cfg.model.tokenizer) == ("org/name", "tiny:llama")
    assert cfg.cqe.models["phi-3.5-mini-instruct"] == "microsoft/Phi-3.5-mini-instruct"


def test_a_model_folder_is_a_path_when_it_exists_or_looks_like_one(elsewhere):
    (elsewhere / "org" / "model").mkdir(parents=True)
    cfg = load_config(DEMO, ["model.name_or_path=org/model", "caption.model=./cap",
                             "cqe.models.mine=../phi"])  # fmt: skip
    assert cfg.model.name_or_path == str(elsewhere / "org" / "model")
    assert cfg.caption.model == str(elsewhere / "cap")
    assert cfg.cqe.models["mine"] == str(elsewhere.parent / "phi")
    assert looks_like_path("a/b/c", elsewhere) and not looks_like_path("a/b", elsewhere)


def test_env_paths_stay_env_reads_in_the_saved_config(elsewhere, monkeypatch):
    from caslie.config import to_yaml

    monkeypatch.setenv("VOTES_DIR", "data/sample/votes")
    (elsewhere / "env.yaml").write_text(f"base: [{DEMO}]\ndata:\n  votes: ${{oc.env:VOTES_DIR}}\n")
    cfg = load_config(elsewhere / "env.yaml")
    assert cfg.data.votes == str(REPO_ROOT / "data/sample/votes")
    assert "${oc.env:VOTES_DIR}" in to_yaml(cfg)


def test_inspect_runs_from_another_directory(elsewhere, capsys):
    assert caslie_main(["inspect", "--config", str(DEMO), "--n", "1", "data.tasks=sa"]) == 0
    assert "task=sa" in capsys.readouterr().out


def test_a_missing_path_is_named_absolute(elsewhere):
    from caslie.data.votes import open_votes

    cfg = load_config(DEMO, ["data.votes=nowhere"])
    with pytest.raises(CoverageError, match=f"vote cache {elsewhere / 'nowhere'} does not exist"):
        open_votes(cfg.data, cfg.data.voters)

"""The typed config: defaults, inheritance, overrides, suggestions, every shipped file."""

from pathlib import Path

import pytest

from caslie.config import load_config, parse_overrides
from caslie.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_hyper_parameters():
    cfg = load_config()
    assert cfg.optim.lr == 1e-4
    assert cfg.optim.effective_batch_size == 128
    assert cfg.optim.warmup_ratio == 0.05
    assert cfg.optim.scheduler == "cosine"
    assert cfg.trainer.max_epochs == 3
    assert (cfg.model.lora_r, cfg.model.lora_alpha, cfg.model.lora_dropout) == (16, 16, 0.1)
    assert "lm_head" in cfg.model.lora_target_modules
    assert cfg.data.tasks == ["ap", "cc", "prp", "psi", "mpc", "sa", "sr"]
    assert cfg.accumulate_grad_batches == 32


def test_inheritance_then_file_then_overrides(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("optim:\n  lr: 0.5\n  micro_batch_size: 8\nrun:\n  name: a\n")
    (tmp_path / "b.yaml").write_text("optim:\n  lr: 0.25\n")
    (tmp_path / "sub" / "exp.yaml").write_text("base: [../a.yaml, ../b.yaml]\nrun:\n  name: exp\n")
    cfg = load_config(tmp_path / "sub" / "exp.yaml")
    assert cfg.optim.lr == 0.25  # later base wins
    assert cfg.optim.micro_batch_size == 8  # from the first base
    assert cfg.run.name == "exp"  # the file itself wins over its bases
    cfg = load_config(tmp_path / "sub" / "exp.yaml", ["optim.lr=0.125", "--run.name=cli"])
    assert (cfg.optim.lr, cfg.run.name) == (0.125, "cli")


def test_inheritance_loop_is_reported(tmp_path: Path):
    (tmp_path / "a.yaml").write_text("base: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "a.yaml")


def test_best_checkpoint_by_loss_as_ecellm():
    cfg = load_config(None, ["eval.select=loss", "eval.generate_on_val=false"])
    assert cfg.eval.select == "loss" and not cfg.eval.generate_on_val


def test_sweep_style_arguments():
    assert parse_overrides(["--data.votes=None", "a=1"]) == ["data.votes=null", "a=1"]
    cfg = load_config(None, ["--data.votes=None", "--data.tasks=sa", "--optim.lr=0.001"])
    assert cfg.data.votes is None
    assert cfg.data.tasks == ["sa"]
    assert cfg.optim.lr == 0.001


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["optim.lrr=1"], "did you mean 'optim.lr'"),
        (["optm.lr=1"], "did you mean 'optim'"),
        (["data.fusin=mv"], "did you mean 'data.fusion'"),
        (["optim.learning_rate=1e-4"], "did you mean 'optim.lr'"),
        (["lr=2e-4"], "did you mean 'optim.lr'"),
        (["epochs=3"], "did you mean 'trainer.max_epochs'"),
        (["tasks=[sa]"], "did you mean 'data.tasks'"),
        (["trainer.max_epoch=2"], "did you mean 'trainer.max_epochs'"),
        (["optim.lr=-1"], "optim.lr must be a positive finite number"),
        (["data.fusion=majority"], "unknown data.fusion 'majority'"),
        (["data.tasks=[sa,sentimnt_analysis]"], "did you mean 'sentiment_analysis'"),
        (["optim.micro_batch_size=5"], "not divisible"),
        (["trainer.devices=3"], "not divisible"),
        (["optim.lr=abc"], "optim.lr"),
        (["data.on_error=ignore"], "data.on_error"),
        (["data.eval_splits=[test_iid]"], "unknown split 'test_iid'"),
        (["noequals"], "key=value"),
        (["eval.select=accuracy"], "eval.select must be 'primary' or 'loss'"),
        (["eval.generate_on_val=false"], "set eval.select=loss"),
        (["data.image_size=8"], "data.image_size must be at least 32"),
        (["data.captions=''"], "data.captions is empty"),
        (["trainer.precision=bf16-mix"], "unknown trainer.precision 'bf16-mix'"),
        (["trainer.accelerator=gpus"], "unknown trainer.accelerator 'gpus'"),
        (["data.min_caption_coverage=1.5"], "data.min_caption_coverage must be between 0 and 1"),
        (["data.tasks=[sa"], "cannot parse overrides"),
        (
            ["optim.lr=${oc.env:CASLIE_UNSET_VARIABLE}"],
            "config key 'optim.lr': .*CASLIE_UNSET_VARIABLE",
        ),
        (["data.tasks=${oc.env:CASLIE_UNSET_VARIABLE}"], "config key 'data.tasks'"),
    ],
)
def test_bad_config_fails_clearly(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_typo_in_a_file_names_the_file(tmp_path: Path):
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  effective_batch: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "optim.effective_batch" in str(err.value)
    assert "optim.effective_batch_size" in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path):
    if path.parent.name in ("strategy", "grids"):
        pytest.skip("not a run config")
    command = {"caption": "caslie caption", "cqe": "caslie vote"}.get(
        path.parent.name, "python train.py"
    )
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# {command} --config {path.relative_to(REPO)}"), (
        "configs open with the command that runs them"
    )
    cfg = load_config(path)
    if path.parent.name == "task_specific":
        assert len(cfg.data.tasks) == 1 and cfg.data.tasks[0] in path.stem
    if path.stem.endswith("_text"):
        assert cfg.data.fusion == "none"
    if path.parent.name == "caption":
        assert cfg.data.captions != "dataset"
    if path.parent.name == "cqe":
        assert cfg.data.votes and set(cfg.data.voters) <= set(cfg.cqe.models)


@pytest.mark.parametrize(
    ("override", "message"),
    [("optim.lr=inf", "optim.lr must be a positive finite"),
     ("optim.lr=nan", "optim.lr must be a positive finite"),
     ("optim.weight_decay=inf", "optim.weight_decay must be finite")],
)  # fmt: skip
def test_infinite_or_nan_optimiser_numbers_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "configs/demo.yaml", [override])


def test_precision_and_accelerator_names_are_lightnings():
    """The config checks these names without importing Lightning; this keeps the lists in step."""
    import typing

    from lightning.fabric import connector
    from lightning.fabric.accelerators import ACCELERATOR_REGISTRY

    from caslie.config import ACCELERATORS, PRECISIONS

    lightning_precisions = typing.get_args(connector._PRECISION_INPUT_STR) + typing.get_args(
        connector._PRECISION_INPUT_STR_ALIAS
    )
    assert set(PRECISIONS) == {"auto", *lightning_precisions}
    assert set(ACCELERATOR_REGISTRY.available_accelerators()) | {"auto", "gpu"} == set(ACCELERATORS)


def test_overrides_take_the_space_separated_form_too():
    from caslie.config import parse_overrides

    assert parse_overrides(["--optim.lr", "2e-4", "data.tasks=sa", "--run.name=x", "--data.fusion", "none"]) == [
        "optim.lr=2e-4", "data.tasks=sa", "run.name=x", "data.fusion=none"]  # fmt: skip
    assert load_config(None, ["--optim.lr", "2e-4"]).optim.lr == 2e-4
    with pytest.raises(ConfigError, match="'--optim.lr' is not of the form key=value"):
        parse_overrides(["--optim.lr", "--run.name=x"])

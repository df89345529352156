"""--print-config: every key, its resolved value and where it was set; the output loads back."""

import pytest

from caslie.config import load_config, to_yaml
from caslie.config_paths import REPO_ROOT
from caslie.config_print import format_config

DEMO = REPO_ROOT / "configs" / "demo.yaml"


def _notes(text: str) -> dict[str, str]:
    """Dotted key -> the note after its value."""
    out, stack = {}, []
    for line in text.splitlines():
        depth = (len(line) - len(line.lstrip())) // 2
        key = line.strip().split(":", 1)[0]
        stack[depth:] = [key]
        if "  # " in line:
            out[".".join(stack)] = line.rsplit("  # ", 1)[1]
    return out


def test_each_value_names_the_base_file_the_config_the_command_line_or_default():
    notes = _notes(format_config(load_config(DEMO, ["optim.lr=3e-4", "--data.tasks", "sa"])))
    assert notes["run.name"] == "configs/demo.yaml"
    assert notes["run.output_dir"] == "configs/base.yaml"  # demo.yaml's base
    assert notes["optim.lr"] == notes["data.tasks"] == "command line"
    assert notes["run.overwrite"] == notes["data.split_map.valid"] == "default"


def test_the_printed_config_loads_back_as_the_same_config(tmp_path):
    cfg = load_config(DEMO, ["optim.lr=3e-4", "data.fusion=uia", "trainer.ckpt_path=last"])
    printed = tmp_path / "printed.yaml"
    printed.write_text(format_config(cfg))
    assert to_yaml(load_config(printed)) == to_yaml(cfg)


def test_every_key_is_listed():
    from caslie.config import Config, _valid_keys

    notes = _notes(format_config(load_config(DEMO)))
    sections = {k.rpartition(".")[0] for k in _valid_keys(Config)}
    leaves = [k for k in _valid_keys(Config) if k not in sections]
    assert [k for k in leaves if k not in notes and not k.endswith(("split_map", "models"))] == []


def test_a_secret_from_the_environment_is_not_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_ENTITY_SECRET", "s3cr3t-token-value")
    (tmp_path / "c.yaml").write_text(
        f"base: [{DEMO}]\nlogger:\n  wandb:\n    entity: ${{oc.env:WANDB_ENTITY_SECRET}}\n"
    )
    text = format_config(load_config(tmp_path / "c.yaml"))
    assert "s3cr3t" not in text and "oc.env:WANDB_ENTITY_SECRET" in text


@pytest.mark.parametrize("value", ["no", "tiny:mistral", "", "a: b"])
def test_strings_yaml_would_misread_are_quoted(tmp_path, value):
    cfg = load_config(DEMO, ["run.name=x", f"logger.wandb.group='{value}'"])
    (tmp_path / "p.yaml").write_text(format_config(cfg))
    assert load_config(tmp_path / "p.yaml").logger.wandb.group == value

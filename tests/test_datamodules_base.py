"""CaslieDataModule: what both DataModules share; here, the run folder's list of skipped rows."""

import json

import lightning as L
from conftest import write_jsonl

from datamodules.base import SKIPPED_ROWS_FILE
from datamodules.mmec import MMECDataModule


def _attach(dm, run_dir):
    trainer = L.Trainer(default_root_dir=str(run_dir), accelerator="cpu", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    dm.trainer = trainer
    return dm


def test_setup_writes_every_skipped_row_into_the_run_folder(
    sample_config, tokenizer, tmp_path, sample_rows
):
    rows = [r for r in sample_rows if r["task"] == "sentiment_analysis"]
    rows = [dict(r, id=f"sa{i}") for i, r in enumerate(rows)]
    bad = {3: {"output": None}, 8: {"input": "{"}, 20: {"id": "sa0"}}
    for i, change in bad.items():
        rows[i] = rows[i] | change
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    cfg = sample_config(
        f"data.source={path}", "data.on_error=skip", "data.tasks=sa", "data.fusion=none"
    ).data
    run_dir = tmp_path / "run"
    dm = _attach(MMECDataModule(cfg, tokenizer), run_dir)
    dm.prepare_data()
    dm.setup("fit")
    written = [json.loads(line) for line in (run_dir / SKIPPED_ROWS_FILE).read_text().splitlines()]
    assert [(w["line"], w["id"], w["field"]) for w in written] == [(4, "sa3", "output"), (9, "sa8", "input"),
                                                                   (21, "sa0", "id")]  # fmt: skip
    assert all(w["file"] == str(path) and w["reason"] for w in written)
    # A second load (the tokenised cache reused) writes the same list.
    (run_dir / SKIPPED_ROWS_FILE).unlink()
    again = _attach(MMECDataModule(cfg, tokenizer), run_dir)
    again.setup("fit")
    assert again.built.from_cache
    assert [
        json.loads(line) for line in (run_dir / SKIPPED_ROWS_FILE).read_text().splitlines()
    ] == written


def test_a_clean_load_writes_no_skipped_file(sample_config, tokenizer, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SKIPPED_ROWS_FILE).write_text("{}\n")  # from an earlier load of another source
    dm = _attach(
        MMECDataModule(sample_config("data.tasks=sa", "data.fusion=none").data, tokenizer), run_dir
    )
    dm.prepare_data()
    dm.setup("fit")
    assert not (run_dir / SKIPPED_ROWS_FILE).exists()

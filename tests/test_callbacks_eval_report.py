"""EvalReport: W&B table images go through the data's image loader (a refused one is missing);
metrics.json keeps the written decimals."""

import io
import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from lightning.pytorch.loggers import WandbLogger
from PIL import Image

from callbacks.eval_report import EvalReport
from caslie.metrics import DECIMALS


def _png(size, color=(10, 200, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buf, format="PNG")
    return buf.getvalue()


def _row(i: int, image: str) -> dict:
    return {"split": "test_ind", "id": f"r{i}", "task": "sa", "images": [image], "captions": [],
            "caption_used": [], "votes": [], "prompt": "p", "generated": "good", "parsed": "good",
            "gold": "good", "correct": True}  # fmt: skip


def _table(path: Path) -> dict | None:
    """A predictions table as W&B stores it (with image entries), or None for any other file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    is_table = isinstance(data, dict) and "image" in data.get("columns", [])
    return data if is_table and isinstance(data["data"][0][3], dict) else None


def test_refused_images_are_missing_in_the_table_and_never_copied(tmp_path, caplog, monkeypatch):
    wandb_data = tmp_path / "wandb-data"
    monkeypatch.setenv("WANDB_DATA_DIR", str(wandb_data))
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "images" / "good.png").write_bytes(_png((40, 30)))
    (root / "images" / "bomb.png").write_bytes(_png((12000, 12000), mode="1"))  # 144 Mpx
    secret = _png((33, 33), color=(1, 2, 3)) + b"SECRET-BYTES-1234"  # still a valid PNG
    (tmp_path / "secret.png").write_bytes(secret)
    refs = ["images/good.png", str(tmp_path / "secret.png"), "../secret.png",
            "images/bomb.png", "http://127.0.0.1:9/x.png"]  # fmt: skip
    rows = [_row(i, ref) for i, ref in enumerate(refs)]
    metrics = {"test_ind": {"sa": {"primary": "macro_f1", "macro_f1": 1.0, "failed": 0, "n": 5}}}

    run_dir = tmp_path / "run"
    logger = WandbLogger(project="caslie-test", save_dir=str(run_dir), offline=True)
    trainer = SimpleNamespace(is_global_zero=True, loggers=[logger], ckpt_path=None, global_step=0,
                              datamodule=SimpleNamespace(manifest={"caption_used_pct": {}}))  # fmt: skip
    module = SimpleNamespace(eval_results={"metrics": metrics, "rows": rows})
    report = EvalReport(run_dir, root, n_table_rows=8)
    with caplog.at_level(logging.WARNING, logger="callbacks.eval_report"):
        report.on_test_end(trainer, module)
    logger.experiment.finish()

    warnings = [r.getMessage() for r in caplog.records if "W&B predictions table" in r.getMessage()]
    assert len(warnings) == 1 and "4 image(s) left out" in warnings[0]
    assert "outside the data root" in warnings[0]
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"] == metrics

    # The table's images travel in its run_table artifact, staged under WANDB_DATA_DIR.
    written = [p for folder in (run_dir, wandb_data) for p in folder.rglob("*") if p.is_file()]
    tables = [t for t in map(_table, written) if t is not None]
    assert tables
    for table in tables:
        images = [row[table["columns"].index("image")] for row in table["data"]]
        assert images[0]["_type"] == "image-file" and images[1:] == [None, None, None, None]
    pngs = [p for p in written if p.read_bytes().startswith(b"\x89PNG")]
    assert len(pngs) == 1 and Image.open(pngs[0]).getpixel((0, 0)) == (10, 200, 30)  # the good one
    assert not any(b"SECRET-BYTES-1234" in p.read_bytes() for p in written)


def test_the_default_limits_refuse_private_urls():
    report = EvalReport(Path("run"), Path("data"))
    assert report.image_limits.allow_private is False


def test_metrics_json_keeps_six_decimals_of_the_float64_metrics(tmp_path):
    # 0.8 seen through float32 and 2/3 in float64: the kinds of digits a run's metrics carry.
    noisy, third = float(np.float32(0.8)), 2 / 3
    metrics = {"test_ind": {"sa": {"primary": "macro_f1", "macro_f1": third, "acc": noisy,
                                   "macro_recall": None, "failed": 1, "n": 5},
                            "primary_mean": third}}  # fmt: skip
    trainer = SimpleNamespace(is_global_zero=True, loggers=[], ckpt_path=None, global_step=12,
                              datamodule=SimpleNamespace(manifest={"caption_used_pct": {}}))  # fmt: skip
    module = SimpleNamespace(eval_results={"metrics": metrics, "rows": [_row(0, "x.png")]})
    EvalReport(tmp_path, tmp_path, n_table_rows=0).on_test_end(trainer, module)
    text = (tmp_path / "metrics.json").read_text()
    numbers = re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])", text)
    assert numbers and all(len(n.partition(".")[2]) <= DECIMALS for n in numbers), numbers
    saved = json.loads(text)["metrics"]["test_ind"]
    assert saved["sa"]["acc"] == round(noisy, DECIMALS) == 0.8
    assert saved["sa"]["macro_f1"] == saved["primary_mean"] == round(third, DECIMALS)
    assert saved["sa"]["macro_recall"] is None and saved["sa"]["failed"] == 1
    assert json.loads(text)["global_step"] == 12

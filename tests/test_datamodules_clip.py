"""CLIPDataModule: rows load in setup, images fit data.image_size, resume skips trained batches."""

from conftest import clip_config
from transformers import AutoProcessor

from caslie.tiny import ensure_tiny
from datamodules.clip import CLIPDataModule


def test_rows_load_in_setup_and_the_shared_loader_logic_applies(tmp_path):
    cfg = clip_config(tmp_path, "data.image_size=64", "data.tasks=[sa]")
    processor = AutoProcessor.from_pretrained(ensure_tiny("clip"))
    dm = CLIPDataModule(cfg.data, processor.tokenizer, processor.image_processor, 4, 8)
    assert dm.by_split is None  # nothing is read before setup
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.dataset.limits.size == 64
    assert set(dm.labels) == {"sa"}
    assert dm.manifest["rows"]["sa/train"] == len(dm.by_split["train"])
    full = [b["rows"][0]["meta"]["id"] for b in loader]
    dm.resume_at(0, 2)
    resumed = [b["rows"][0]["meta"]["id"] for b in dm.train_dataloader()]
    assert resumed == full[2:]
    assert len(dm.test_dataloader()) == len(cfg.data.eval_splits)


def test_image_urls_follow_data_allow_private_urls(tmp_path):
    processor = AutoProcessor.from_pretrained(ensure_tiny("clip"))
    for flag in (False, True):
        cfg = clip_config(
            tmp_path, "data.tasks=[sa]", f"data.allow_private_urls={str(flag).lower()}"
        )
        dm = CLIPDataModule(cfg.data, processor.tokenizer, processor.image_processor, 4, 8)
        dm.setup("fit")
        rows = dm.train_dataloader().dataset
        assert rows.limits.allow_private is flag and rows.limits.size == cfg.data.image_size

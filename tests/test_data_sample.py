import json
from collections import Counter
from pathlib import Path

from caslie.config import load_config
from caslie.data.fusion import fuse_records
from caslie.data.records import load_records, parse_row
from caslie.data.sample import CUES, synthetic_rows, write_shipped

REPO = Path(__file__).resolve().parents[1]
SPLIT_MAP = load_config().data.split_map


def test_shipped_sample_is_what_the_generator_writes(tmp_path):
    write_shipped(tmp_path)
    assert (tmp_path / "rows.jsonl").read_bytes() == (REPO / "data/sample/rows.jsonl").read_bytes()
    for voter_dir in (REPO / "data/sample/votes").iterdir():
        assert (tmp_path / "votes" / voter_dir.name / "sample-0.jsonl").read_bytes() == (
            voter_dir / "sample-0.jsonl"
        ).read_bytes()


def test_sample_schema_images_and_domains(sample_rows):
    assert set(sample_rows[0]) == {"task", "split", "setting", "instruction", "input", "options", "output",
                                   "images", "caption_info"}  # fmt: skip
    for row in sample_rows:
        for image in json.loads(row["images"]):
            assert (REPO / "data/sample" / image).is_file()
        ood = row["setting"] == "OOD"
        assert all(Path(i).name.startswith("s" if ood else "t") for i in json.loads(row["images"]))


def test_sample_label_ratios_follow_the_paper(sample_rows):
    def share(task, label):
        rows = [r for r in sample_rows if r["task"] == task and r["split"] == "train"]
        return Counter(r["output"] for r in rows)[label] / len(rows)

    assert share("answerability_prediction", "yes") == 9 / 24  # 3:5
    assert share("product_substitute_identification", "yes") == 6 / 24  # 1:3
    assert share("product_relation_prediction", "A") == 12 / 24  # 4:3:1
    assert share("multiclass_product_classification", "A") == 15 / 24  # 20:7:1:4


def test_sample_votes_cover_every_caption_for_the_five_voters(sample_config):
    cfg = sample_config("data.fusion=mv")
    records, _ = load_records(cfg.data, splits=["train", "val", "test_ind", "test_ood"])
    examples, report = fuse_records(records, cfg.data)  # raises if any vote is missing
    assert len(cfg.data.voters) == 5
    assert all(len(v) == 5 for ex in examples for v in ex.votes)
    pct = [p for split in report.used_pct().values() for p in split.values()]
    assert 20 < sum(pct) / len(pct) < 90


def test_synthetic_rows_are_schema_valid_deterministic_and_marked():
    rows = list(
        synthetic_rows(train_per_task=40, eval_per_task=10, caption_dependent_share=0.25, seed=3)
    )
    again = list(
        synthetic_rows(train_per_task=40, eval_per_task=10, caption_dependent_share=0.25, seed=3)
    )
    assert rows == again
    assert len(rows) == 7 * (40 + 10 + 10) + 5 * 10
    records = [parse_row(r, f"syn[{i}]", SPLIT_MAP) for i, r in enumerate(rows)]
    assert len({r.id for r in records}) == len(records)
    train = [r for r in rows if r["split"] == "train"]
    assert sum(r["caption_dependent"] for r in train) == 7 * 10


def test_caption_dependent_rows_carry_the_label_only_in_the_caption():
    for row in synthetic_rows(
        train_per_task=30, eval_per_task=0, seed=1, tasks=["sa", "mpc", "psi", "ap", "prp"]
    ):
        task = {"sentiment_analysis": "sa", "multiclass_product_classification": "mpc",
                "product_substitute_identification": "psi", "answerability_prediction": "ap",
                "product_relation_prediction": "prp"}[row["task"]]  # fmt: skip
        cue = CUES[task][row["output"]]
        text = row["input"] + row["options"]
        caption = row["caption_info"]
        if row["caption_dependent"]:
            assert cue in caption and not any(
                c.lower() in text.lower() for c in CUES[task].values()
            )
        else:
            assert cue.lower() in text.lower() and cue not in caption

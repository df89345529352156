import json
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_jsonl

from caslie.data.records import load_records
from caslie.errors import DataError, HubUnavailableError, RowError


def test_sample_loads_every_task_and_split(sample_config):
    records, report = load_records(sample_config().data)
    counts = Counter((r.task, r.split) for r in records)
    for task in ("ap", "cc", "prp", "psi", "mpc", "sa", "sr"):
        assert counts[(task, "train")] >= 24
        assert counts[(task, "val")] >= 6
        assert counts[(task, "test_ind")] >= 12
        has_ood = task not in ("psi", "mpc")
        assert (counts[(task, "test_ood")] >= 12) if has_ood else counts[(task, "test_ood")] == 0
    assert report.n_skipped == 0
    assert report.duplicate_ids == 0


def test_row_ids_are_stable_content_hashes(sample_config, tmp_path, sample_rows):
    first, _ = load_records(sample_config().data)
    again, _ = load_records(sample_config().data)
    assert [r.id for r in first] == [r.id for r in again]
    assert len({r.id for r in first}) == len(first)
    # An explicit id column wins; reordering rows does not change content ids.
    rows = sample_rows[:3]
    rows[0] = dict(rows[0], id="my-row")
    path = write_jsonl(tmp_path / "rows.jsonl", list(reversed(rows)))
    recs, _ = load_records(
        sample_config(f"data.source={path}", "data.tasks=all").data, splits=["train"]
    )
    by_id = {r.id for r in recs}
    assert "my-row" in by_id
    assert {r.id for r in first[1:3]} <= by_id


def test_json_parquet_and_folder_sources(sample_config, tmp_path, sample_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [r for r in sample_rows if r["split"] == "val"]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps(rows[:10]))
    pq.write_table(pa.Table.from_pylist(rows[10:]), tmp_path / "d" / "b.parquet")
    recs, report = load_records(sample_config(f"data.source={tmp_path / 'd'}").data, splits=["val"])
    assert len(recs) == len(rows)
    assert report.rows_read == len(rows)


def _bad(sample_rows, **changes):
    row = dict(next(r for r in sample_rows if r["task"] == "sentiment_analysis"))
    row.update(changes)
    return [row for row in sample_rows[:5]] + [row]


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"output": None}, "output", "missing"),
        ({"input": '{"review": "good'}, "input", "invalid JSON"),
        ({"options": '["A: very positive",'}, "options", "invalid JSON"),
        ({"images": "images/x.png"}, "images", "invalid JSON"),
        ({"caption_info": "[not json]"}, "caption_info", "invalid JSON"),
        ({"task": "price_prediction"}, "task", "unknown task"),
        ({"images": '["a.png", "b.png"]'}, "images", "2 image(s) for 1 product"),
        ({"caption_info": '["one", "two"]'}, "caption_info", "2 caption(s) for 1 images"),
        ({"output": "F"}, "output", "not among the options"),
        ({"input": '["a list"]'}, "input", "expected a JSON dict"),
        ({"split": "dev"}, "split", "not in data.split_map"),
        ({"setting": "CROSS"}, "setting", "test/CROSS"),
    ],
)
def test_bad_rows_name_location_row_and_field(
    sample_config, tmp_path, sample_rows, changes, field, problem
):
    rows = _bad(sample_rows, **changes)
    if changes.get("setting"):
        rows[-1]["split"] = "test"
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(RowError) as err:
        load_records(sample_config(f"data.source={path}").data)
    assert err.value.field == field
    assert problem in str(err.value)
    assert f"{path}:6" in str(err.value)
    assert "row " in str(err.value)


def test_skip_counts_and_reports_what_it_dropped(sample_config, tmp_path, sample_rows):
    rows = _bad(sample_rows, output="F") + _bad(sample_rows, input="{")[-1:] + ["not json at all"]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    recs, report = load_records(sample_config(f"data.source={path}", "data.on_error=skip").data)
    assert report.n_skipped == 3
    assert len(recs) == 5
    assert report.rows_read == 8
    summary = report.summary()
    assert "skipped 3 invalid rows" in summary and "output" in summary and "input" in summary


def test_binary_task_gold_must_be_yes_or_no(sample_config, tmp_path, sample_rows):
    row = dict(
        next(r for r in sample_rows if r["task"] == "answerability_prediction"), output="maybe"
    )
    path = write_jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(RowError, match="'maybe' is not one of yes, no"):
        load_records(sample_config(f"data.source={path}").data)


def test_nothing_left_after_filters_says_what_exists(sample_config, tmp_path, sample_rows):
    path = write_jsonl(
        tmp_path / "rows.jsonl", [r for r in sample_rows if r["task"] == "sentiment_analysis"]
    )
    with pytest.raises(DataError, match=r"nothing left after filters.*'ap'.*sa/train"):
        load_records(sample_config(f"data.source={path}", "data.tasks=ap").data)


def test_task_specific_selection_and_row_limit(sample_config):
    recs, _ = load_records(sample_config("data.tasks=sr", "data.max_rows_per_task=5").data)
    assert {r.task for r in recs} == {"sr"}
    assert Counter(r.split for r in recs) == {"train": 5, "val": 5, "test_ind": 5, "test_ood": 5}


def test_unknown_source_is_explained(sample_config):
    with pytest.raises(DataError, match="neither an existing file or folder nor a hub id"):
        load_records(sample_config("data.source=./no/such/file.jsonl").data)


def test_hub_id_fails_fast_offline_naming_the_id(sample_config):
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="dataset 'NingLab/MMECInstruct'") as err:
        load_records(sample_config("data.source=NingLab/MMECInstruct").data)
    assert time.monotonic() - start < 10
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "data.source" in str(err.value)


def test_records_keep_parsed_fields(sample_config):
    recs, _ = load_records(sample_config("data.tasks=[sr,prp]").data, splits=["train"])
    sr = next(r for r in recs if r.task == "sr")
    assert isinstance(sr.input, list) and len(sr.images) == len(sr.input) + len(sr.options)
    assert sr.labels()[0] == "A"
    prp = next(r for r in recs if r.task == "prp")
    assert set(prp.input) == {"product 1", "product 2"} and len(prp.images) == 2
    assert Path(prp.location.rsplit(":", 1)[0]).name == "rows.jsonl"


def test_repeated_rows_get_distinct_ids_and_urls_need_no_download(
    sample_config, tmp_path, sample_rows
):
    row = dict(sample_rows[0], images=json.dumps(["https://images.example.com/t08.jpg"]))
    path = write_jsonl(tmp_path / "rows.jsonl", [row, row])
    recs, report = load_records(sample_config(f"data.source={path}").data, splits=["train"])
    assert recs[1].id == recs[0].id + "#2"
    assert report.duplicate_ids == 1 and "repeat an earlier row" in report.summary()
    assert recs[0].images == ("https://images.example.com/t08.jpg",)

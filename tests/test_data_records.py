import json
import logging
import re
import shlex
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import REPO, write_jsonl

from caslie.config import load_config
from caslie.data.records import MAX_DEPTH, load_gold_rows, load_records
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
    assert report.duplicate_ids == 1
    assert "1 rows without an id repeat an earlier row's content" in report.summary()
    assert recs[0].images == ("https://images.example.com/t08.jpg",)


def test_repeated_explicit_ids_are_an_error_naming_both_rows(sample_config, tmp_path, sample_rows):
    rows = [dict(r, id=f"r{i}") for i, r in enumerate(sample_rows[:4])]
    rows[3]["id"] = "r1"  # different content, same id: joins with captions and votes would break
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(
        RowError, match=rf"{path}:4: row r1: field 'id': repeats the id of the row at {path}:2"
    ):
        load_records(sample_config(f"data.source={path}").data, splits=["train"])
    with pytest.raises(RowError, match="repeats the id of the row at"):
        load_gold_rows(str(path), dict(sample_config().data.split_map))
    recs, report = load_records(
        sample_config(f"data.source={path}", "data.on_error=skip").data, splits=["train"]
    )
    assert [r.id for r in recs] == ["r0", "r1", "r2"]
    assert report.n_skipped == 1 and report.duplicate_ids == 0
    assert report.skipped_rows == [
        {"location": f"{path}:4", "file": str(path), "line": 4, "row": None, "id": "r1",
         "field": "id", "reason": report.skipped_rows[0]["reason"]}
    ]  # fmt: skip
    assert "repeat an earlier row's content" not in report.summary()


def _skip(sample_config, path, **kw):
    return load_records(sample_config(f"data.source={path}", "data.on_error=skip").data, **kw)


def test_a_bad_byte_names_its_line_and_only_that_line_is_skipped(sample_config, tmp_path):
    lines = (REPO / "data/sample/rows.jsonl").read_bytes().splitlines(keepends=True)[:10]
    lines[6] = lines[6].replace(b"Analyze", b"Analyz\xe9", 1)
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(lines))
    with pytest.raises(
        RowError, match=rf"{path}:7: row: field '<line>': the line is not UTF-8 \(byte 0xe9"
    ):
        load_records(sample_config(f"data.source={path}").data, splits=["train"])
    recs, report = _skip(sample_config, path, splits=["train"])
    assert len(recs) == 9 and report.skipped_rows[0]["line"] == 7


def test_a_latin1_file_is_a_row_error_per_line(sample_config, tmp_path, sample_rows):
    rows = [dict(r, instruction=r["instruction"] + " caf\u00e9") for r in sample_rows[:3]]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1")
    )
    with pytest.raises(RowError, match=rf"{path}:1: .*not UTF-8 \(byte 0xe9"):
        load_records(sample_config(f"data.source={path}").data, splits=["train"])
    with pytest.raises(DataError, match="nothing left after filters"):
        _skip(sample_config, path, splits=["train"])


def test_a_utf8_byte_order_mark_is_accepted(sample_config, tmp_path, sample_rows):
    path = write_jsonl(tmp_path / "rows.jsonl", sample_rows[:3])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    recs, _ = load_records(sample_config(f"data.source={path}").data, splits=["train"])
    assert len(recs) == 3


def test_whole_file_problems_are_one_data_error(sample_config, tmp_path, sample_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(sample_rows[:5]), parquet)
    cases = {
        "as.jsonl": (parquet.read_bytes(), "holds parquet data, not JSON; rename it to as.parquet"),
        "torn.parquet": (parquet.read_bytes()[:200], "not a readable parquet file"),
        "bad.json": (b'[{"task": "sa"},\n  oops]', r"bad.json:2: not valid JSON \(Expecting value"),
        "latin.json": (
            b'[\n{"task": "caf\xe9"}]',
            r"latin.json:2: the file is not UTF-8 \(byte 0xe9",
        ),
        "deep.json": (
            b"[" * 100_000 + b"]" * 100_000,
            r"deep.json: not valid JSON \(maximum recursion",
        ),
        "object.json": (b'{"rows": []}', "must hold a list of rows, got dict"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for on_error in ("raise", "skip"):
            cfg = sample_config(f"data.source={path}", f"data.on_error={on_error}").data
            with pytest.raises(DataError, match=problem) as err:
                load_records(cfg)
            assert not isinstance(err.value, RowError) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("make", "field", "problem"),
    [
        (
            lambda r: dict(r, input="[" * 100_000 + "]" * 100_000),
            "input",
            "nested too deeply to parse",
        ),
        (
            lambda r: dict(r, input="[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)),
            "input",
            f"nested more than {MAX_DEPTH} levels deep",
        ),
        (lambda r: dict(r, extra=json.loads("[" * 200 + "]" * 200)), "<line>", "nested more than"),
        (lambda r: dict(r, input='{"review": "\\ud800"}'), "input", "lone surrogate"),
        (lambda r: dict(r, input='{"n": ' + "9" * 5000 + "}"), "input", "invalid JSON"),
        (lambda r: dict(r, output="line one\nline two"), "output", r"'line one\\nline two' is not"),
        (lambda r: dict(r, task=["sa"]), "task", r"unknown task \['sa'\]"),
        (lambda r: dict(r, split={"a": 1}), "split", "expected a split name, got {'a': 1}"),
        (lambda r: dict(r, id={"a": 1}), "id", "expected a string or integer, got dict"),
        (lambda r: dict(r, id="two\nlines"), "id", "expected a short printable id"),
        (lambda r: dict(r, instruction="x" * 1_000_000 + "\n"), None, None),  # huge: fine
    ],
)
def test_hostile_rows_are_row_errors_and_skippable(
    sample_config, tmp_path, sample_rows, make, field, problem
):
    rows = [r for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "train"][
        :4
    ]
    rows[1] = make(rows[1])
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    if field is None:
        recs, _ = load_records(sample_config(f"data.source={path}").data, splits=["train"])
        assert len(recs) == 4
        return
    with pytest.raises(RowError) as err:
        load_records(sample_config(f"data.source={path}").data, splits=["train"])
    assert err.value.field == field and err.value.location == f"{path}:2"
    assert re.search(problem, str(err.value)) and "\n" not in str(err.value)
    assert len(str(err.value)) < 600  # a megabyte field is shown cut short
    recs, report = _skip(sample_config, path, splits=["train"])
    assert len(recs) == 3 and report.skipped_rows[0]["line"] == 2


def test_eval_rows_copied_into_train_are_reported(sample_config, tmp_path, sample_rows, caplog):
    test = [r for r in sample_rows if r["split"] == "test" and r.get("setting") != "OOD"][:3]
    val = [r for r in sample_rows if r["split"] == "val"][:2]
    train = [r for r in sample_rows if r["split"] == "train"][:5]
    leaked = [dict(r, split="train", setting="IND") for r in test[:2] + val[:1]]
    path = write_jsonl(tmp_path / "rows.jsonl", train + leaked + test + val)
    with caplog.at_level(logging.WARNING, logger="caslie.data.records"):
        _, report = load_records(sample_config(f"data.source={path}").data)
    assert report.overlap == {("train", "test_ind"): 2, ("train", "val"): 1}
    assert (
        "3 evaluation rows repeat a training row's content (test_ind ~ train: 2, val ~ train: 1)"
        in report.summary()
    )
    warnings = [r for r in caplog.records if "repeat a training row" in r.getMessage()]
    assert len(warnings) == 1
    _, clean = load_records(sample_config().data)
    assert not clean.overlap


def test_unknown_setting_advice_works_when_applied(sample_config, tmp_path, sample_rows):
    rows = [dict(r, setting="ODD/v1.2") for r in sample_rows if r["split"] == "test"][:3]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(RowError, match="is not in data.split_map") as err:
        load_records(sample_config(f"data.source={path}").data, splits=["test_ood"])
    advice = str(err.value).rsplit("e.g. ", 1)[1]
    (override,) = shlex.split(advice)  # what a shell passes on when the advice is pasted
    cfg = load_config(None, [f"data.source={path}", f"data.cache_dir={tmp_path}", override])
    recs, _ = load_records(cfg.data, splits=["test_ood"])
    assert len(recs) == 3 and {r.split for r in recs} == {"test_ood"}


def test_skipped_rows_keep_location_id_field_and_reason(
    sample_config, tmp_path, sample_rows, caplog
):
    rows = [dict(r, id=f"r{i}") for i, r in enumerate(sample_rows[:12])]
    for i in (1, 3, 5, 7, 9, 11):
        rows[i]["output"] = None
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="caslie.data.records"):
        _, report = _skip(sample_config, path, splits=["train"])
    assert [(s["line"], s["id"], s["field"], s["reason"]) for s in report.skipped_rows] == [
        (i + 1, f"r{i}", "output", "missing") for i in (1, 3, 5, 7, 9, 11)
    ]
    (warning,) = [
        r.getMessage() for r in caplog.records if "skipped 6 invalid rows" in r.getMessage()
    ]
    assert f"{path}:2: output: missing" in warning and "... and 1 more" in warning

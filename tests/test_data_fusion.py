"""Caption fusion: mv, uia, none, single; votes tied to captions; byte-exact serialisation."""

import json
from pathlib import Path

import pytest
from conftest import GOLDEN_CASES, SPLIT_MAP, golden_row, write_jsonl

from caslie.cqe import vote_jobs
from caslie.data.cache import CaptionCache, VoteCache, text_hash
from caslie.data.fusion import fuse_records, fuse_text, text_only
from caslie.data.records import load_records, parse_row
from caslie.errors import CoverageError

TASKS = ["ap", "cc", "prp", "psi", "mpc", "sa", "sr"]


def _fused(sample_config, *overrides):
    cfg = sample_config(*overrides)
    records, _ = load_records(cfg.data, splits=["train"])
    return fuse_records(records, cfg.data)


def _majority(ex, j, voters):
    yes = sum(ex.votes[j][v] == "yes" for v in voters)
    return yes > len(voters) - yes


@pytest.mark.parametrize("task", TASKS)
def test_mv_uses_exactly_the_captions_a_majority_accepts(sample_config, task):
    examples, report = _fused(sample_config, f"data.tasks={task}", "data.fusion=mv")
    voters = sample_config().data.voters
    n_used = 0
    for ex in examples:
        for j, cap in enumerate(ex.captions):
            assert ex.used[j] == _majority(ex, j, voters)
            n_used += ex.used[j]
            text = ex.input_text + (ex.options_text or "")
            assert (json.dumps(cap)[1:-1] in text) == ex.used[j] or task == "sr" and not ex.used[j]
    assert 0 < n_used < sum(len(ex.captions) for ex in examples)  # the sample's votes split
    pct = report.used_pct()["train"][task]
    assert pct == round(100 * n_used / sum(len(ex.captions) for ex in examples), 1)


def test_uia_none_and_single(sample_config):
    uia, rep = _fused(sample_config, "data.fusion=uia")
    assert all(all(ex.used) for ex in uia)
    assert set(rep.used_pct()["train"].values()) == {100.0}
    none, rep = _fused(sample_config, "data.fusion=none")
    assert not any(any(ex.used) for ex in none)
    assert all("extracted from image" not in ex.input_text for ex in none)
    single, _ = _fused(sample_config, "data.fusion=single:phi-3.5-mini-instruct")
    for ex in single:
        for j, used in enumerate(ex.used):
            assert used == (ex.votes[j]["phi-3.5-mini-instruct"] == "yes")
            assert list(ex.votes[j]) == ["phi-3.5-mini-instruct"]


def test_missing_votes_fail_before_training_naming_the_command(sample_config, tmp_path: Path):
    votes = tmp_path / "votes"
    src = Path(sample_config().data.votes)
    for voter in sample_config().data.voters:
        (votes / voter).mkdir(parents=True)
        lines = (src / voter / "sample-0.jsonl").read_text().splitlines()
        (votes / voter / "part.jsonl").write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    with pytest.raises(CoverageError) as err:
        _fused(sample_config, f"data.votes={votes}")
    msg = str(err.value)
    assert (
        "caslie vote " in msg and f"data.votes={votes}" in msg and "phi-3.5-mini-instruct:" in msg
    )
    assert "data.captions=dataset" in msg and "'data.voters=[" in msg
    with pytest.raises(CoverageError, match="set data.votes"):
        _fused(sample_config, "data.votes=null")
    with pytest.raises(CoverageError, match="does not exist"):
        _fused(sample_config, f"data.votes={tmp_path / 'nowhere'}")


def test_votes_are_tied_to_the_caption_text(sample_config, tmp_path, sample_rows):
    """A caption cache with other captions than the ones voted on is not covered."""
    cfg = sample_config()
    records, _ = load_records(cfg.data, splits=["train"])
    cache = CaptionCache(tmp_path / "caps")
    with cache.writer() as w:
        for r in records:
            for j in range(len(r.images)):
                w.write(
                    {
                        "row_id": r.id,
                        "image_index": j,
                        "model": "vlm",
                        "template": "t",
                        "caption": f"new {j}",
                    }
                )
    with pytest.raises(CoverageError):
        _fused(sample_config, f"data.captions={tmp_path / 'caps'}")
    uia, _ = _fused(sample_config, f"data.captions={tmp_path / 'caps'}", "data.fusion=uia")
    assert all(ex.captions[0] == "new 0" for ex in uia)
    # Votes on the new captions make MV work again.
    votes = VoteCache(tmp_path / "votes")
    with votes.writer("v1") as w:
        for r in records:
            for j in range(len(r.images)):
                w.write({"row_id": r.id, "image_index": j, "voter": "v1", "caption_sha": text_hash(f"new {j}"),
                         "vote": "yes" if j == 0 else "no"})  # fmt: skip
    mv, _ = _fused(sample_config, f"data.captions={tmp_path / 'caps'}", f"data.votes={tmp_path / 'votes'}",
                   "data.voters=[v1]")  # fmt: skip
    assert all(ex.used[0] and not any(ex.used[1:]) for ex in mv)


def test_failed_captions_are_never_fused(sample_config, tmp_path):
    cfg = sample_config("data.tasks=sa")
    records, _ = load_records(cfg.data, splits=["train"])
    with CaptionCache(tmp_path / "caps").writer() as w:
        for i, r in enumerate(records):
            ok = i % 2 == 0
            w.write({"row_id": r.id, "image_index": 0, "model": "vlm", "template": "t",
                     "caption": "a caption" if ok else "NA", "status": "ok" if ok else "failed"})  # fmt: skip
    caps = ["data.tasks=sa", f"data.captions={tmp_path / 'caps'}", "data.fusion=uia"]
    with pytest.raises(CoverageError, match=r"too few images have a caption .*train 50.0%"):
        _fused(sample_config, *caps)  # half the images failed: below data.min_caption_coverage
    uia, report = _fused(sample_config, *caps, "data.min_caption_coverage=0.5")
    assert report.coverage() == {"train": 0.5}
    assert [ex.used[0] for ex in uia] == [i % 2 == 0 for i in range(len(uia))]
    assert not any('"NA"' in ex.input_text for ex in uia)


def test_rows_without_caption_info_raise_or_are_skipped(sample_config, tmp_path, sample_rows):
    rows = [
        dict(r) for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "train"
    ]
    del rows[2]["caption_info"]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(CoverageError, match="caption_info"):
        _fused(sample_config, f"data.source={path}", "data.fusion=uia")
    examples, report = _fused(
        sample_config, f"data.source={path}", "data.fusion=uia", "data.on_error=skip"
    )
    assert len(examples) == len(rows) - 1
    assert report.skipped["caption_info missing"] == 1


@pytest.mark.parametrize("task", list(GOLDEN_CASES))
def test_rejected_captions_become_null_or_are_left_out(task):
    raw, _, _ = GOLDEN_CASES[task]
    record = parse_row(raw, "golden", SPLIT_MAP)
    n = len(record.images)
    input_text, options_text = fuse_text(record, record.captions, [False] * n)
    if task == "sr":  # sr items are left as they were
        assert input_text == json.dumps(record.input)
        assert options_text == json.dumps(list(record.options))
    else:
        parsed = json.loads(input_text)
        keys = [k for k in parsed if "extracted from image" in k]
        assert keys and all(parsed[k] is None for k in keys)
        assert input_text.endswith(": null}")


def test_text_only_reserialises_with_python_defaults():
    raw = golden_row("sa", {"review": "caf\u00e9,  spaced"}, ["A: x"], "A", 1)
    raw["input"] = '{"review":"caf\u00e9,  spaced"}'  # compact, unescaped in the source
    record = parse_row(raw, "golden", SPLIT_MAP)
    assert text_only(record) == ('{"review": "caf\\u00e9,  spaced"}', '["A: x"]')


def test_na_captions_are_voted_and_fused_like_any_other_unless_dropped(
    sample_config, tmp_path, sample_rows
):
    rows = [
        dict(r) for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "train"
    ][:4]
    rows[0]["caption_info"] = json.dumps(["NA"])
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    records, _ = load_records(sample_config(f"data.source={data}").data, splits=["train"])
    for policy, fused_na in (("vote", True), ("drop", False)):
        cfg = sample_config(f"data.source={data}", "data.fusion=uia", f"data.na_captions={policy}")
        fused, _ = fuse_records(records, cfg.data)
        assert fused[0].used == (fused_na,) and all(ex.used == (True,) for ex in fused[1:])
        jobs, _ = vote_jobs(cfg, records)
        assert ("NA" in [j.caption for j in jobs]) is fused_na  # voting sees what fusion may keep

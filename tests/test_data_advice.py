"""The commands printed for a caption or vote gap work when pasted."""

import shlex
from pathlib import Path

import pytest

from caslie.captioning import run_caption
from caslie.config import load_config
from caslie.cqe import run_vote
from caslie.data.fusion import fuse_records
from caslie.data.records import load_records
from caslie.errors import CacheError, CoverageError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _follow(advice: str, marker: str):
    """The config the pasted command would run with (``caslie <command> --config F... k=v...``)."""
    words = shlex.split(advice.split(marker, 1)[1].strip())
    command, files, overrides = words[1], [], []
    rest = iter(words[2:])
    for word in rest:
        files.append(next(rest)) if word == "--config" else overrides.append(word)
    return command, load_config(files or None, overrides)


def _fuse(cfg):
    records, _ = load_records(cfg.data)
    return fuse_records(records, cfg.data)


def test_the_vote_advice_fills_the_gap_with_the_runs_captions_and_voters(tmp_path):
    base = [
        f"data.votes={tmp_path / 'votes'}",
        f"data.cache_dir={tmp_path / 'c'}",
        "data.tasks=[sa]",
    ]
    run_vote(load_config(REPO / "configs/cqe/demo.yaml", base + ["data.voters=[tiny-llama]"]))
    cfg = load_config(REPO / "configs/cqe/demo.yaml", base + ["data.fusion=mv"])
    with pytest.raises(CoverageError) as err:
        _fuse(cfg)
    command, followed = _follow(str(err.value), "Produce them with:")
    assert command == "vote" and followed.data.voters == [
        "tiny-llama",
        "tiny-mistral",
        "tiny-llava",
    ]
    assert followed.data.captions == cfg.data.captions and followed.cqe.models == cfg.cqe.models
    summary = run_vote(followed)
    assert summary.total == summary.done > 0 and summary.skipped > 0  # only the missing votes
    fused, report = _fuse(cfg)
    assert len(fused) > 0 and report.coverage()


def test_the_caption_advice_fills_a_partial_cache_and_a_wrong_model_is_named(tmp_path):
    base = [f"data.captions={tmp_path / 'caps'}", f"data.cache_dir={tmp_path / 'c'}",
            "data.tasks=[sa]", "data.fusion=uia"]  # fmt: skip
    run_caption(load_config(REPO / "configs/caption/demo.yaml", base), limit=2)
    cfg = load_config(REPO / "configs/demo.yaml", base)  # a training config: caption.model differs
    with pytest.raises(CoverageError, match="too few images have a caption") as err:
        _fuse(cfg)
    command, followed = _follow(str(err.value), "fill it with:")
    assert command == "caption" and followed.caption.model == "tiny:llava"
    assert run_caption(followed).done > 0
    fused, report = _fuse(cfg)
    assert set(report.coverage().values()) == {1.0}
    with pytest.raises(
        CacheError, match="no captions of data.caption_model 'tiny:lava' .*tiny:llava"
    ):
        _fuse(load_config(REPO / "configs/demo.yaml", base + ["data.caption_model=tiny:lava"]))

"""The whole offline chain: caption the sample, vote on those captions, train on the MV fusion."""

import json
from pathlib import Path

import pytest

from caslie.cache import CaptionCache
from caslie.captioning import run_caption
from caslie.config import load_config
from caslie.cqe import run_vote
from caslie.train import run

REPO = Path(__file__).resolve().parents[1]
VOTERS = "data.voters=[tiny-llama,tiny-mistral,tiny-llava]"


@pytest.mark.slow
@pytest.mark.integration
def test_training_consumes_the_caption_and_vote_caches(tmp_path):
    caches = [f"data.captions={tmp_path / 'captions'}", f"data.votes={tmp_path / 'votes'}",
              f"data.cache_dir={tmp_path / 'c'}"]  # fmt: skip
    captioned = run_caption(load_config(REPO / "configs/caption/demo.yaml", caches))
    assert captioned.failed == 0 and captioned.done > 0
    voted = run_vote(
        load_config(REPO / "configs/cqe/demo.yaml", [*caches, "data.caption_model=tiny:llava"])
    )
    assert voted.done == 3 * captioned.done
    cfg = load_config(REPO / "configs/demo.yaml", [
        *caches, "data.caption_model=tiny:llava", "data.fusion=mv", VOTERS, f"run.output_dir={tmp_path / 'runs'}",
        "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "logger.wandb.mode=disabled",
    ])  # fmt: skip
    result = run(cfg)
    used = result.data_manifest["caption_used_pct"]
    assert any(pct > 0 for split in used.values() for pct in split.values())
    cached = CaptionCache(tmp_path / "captions").load(model="tiny:llava")
    rows = [json.loads(line) for line in (result.run_dir / "predictions" / "test_ind.jsonl").open()]
    for row in rows:
        assert row["captions"] == [
            cached[(row["id"], j)]["caption"] for j in range(len(row["images"]))
        ]
        assert all(set(v) == {"tiny-llama", "tiny-mistral", "tiny-llava"} for v in row["votes"])
    fused = [r for r in rows if any(r["caption_used"])]
    # The prompt holds the input re-serialised with json.dumps, so look for the caption that way.
    assert fused and all(
        json.dumps(r["captions"][r["caption_used"].index(True)])[1:-1] in r["prompt"] for r in fused
    )

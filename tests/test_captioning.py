"""``caslie caption`` with the tiny LLaVA on the sample: prompts, cache, resume, shards, kill -9."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_jsonl

import caslie.jobs
from caslie.captioning import (
    Captioner,
    batch_order,
    caption_ahead,
    clean_reference,
    instruction_for,
    prefetched_batches,
    render_caption_prompt,
    run_caption,
)
from caslie.config import load_config
from caslie.data.cache import CaptionCache, read_shards
from caslie.data.records import load_records, parse_row
from caslie.data.sources import default_image_root
from caslie.images import ImageError, ImageLimits, load_image
from caslie.pretrained import Checkpoint, load_processor

REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp: Path, *overrides: str):
    return load_config(REPO / "configs/caption/demo.yaml",
                       [f"data.captions={tmp / 'captions'}", f"data.cache_dir={tmp / 'c'}", *overrides])  # fmt: skip


def _slots(cfg):
    records, _ = load_records(cfg.data, splits=["train", "val", "test_ind", "test_ood"])
    return records


def test_paper_prompts_follow_appendix_c_per_product(tmp_path):
    cfg = _cfg(tmp_path, "caption.prompts=paper")
    records = _slots(cfg)
    prp = next(r for r in records if r.task == "prp")
    first, second = instruction_for(prp, 0, cfg.caption), instruction_for(prp, 1, cfg.caption)
    assert (
        prp.input["product 1"] in first
        and f"between this product and {prp.input['product 2']}" in first
    )
    assert (
        prp.input["product 2"] in second
        and f"between this product and {prp.input['product 1']}" in second
    )
    assert first.endswith("Please keep the caption within 50 words.")
    sr = next(r for r in records if r.task == "sr")
    texts = [instruction_for(sr, j, cfg.caption) for j in range(len(sr.images))]
    assert len(texts) == len(sr.input) + len(sr.options) and len(set(texts)) == len(texts)
    assert sr.options[0].split(": ", 1)[1] in texts[len(sr.input)]
    free = load_config(
        REPO / "configs/caption/demo.yaml", ["caption.context=false", "caption.prompts=paper"]
    ).caption
    assert prp.input["product 1"] not in instruction_for(prp, 0, free)


def test_caption_fills_the_cache_and_a_rerun_skips_everything(tmp_path):
    cfg = _cfg(tmp_path)
    first = run_caption(cfg, tasks=["prp", "sa"], limit=2)
    per_split = Counter()
    n_slots = 0
    for r in _slots(cfg):
        if r.task in ("prp", "sa") and per_split[(r.task, r.split)] < 2:
            per_split[(r.task, r.split)] += 1
            n_slots += len(r.images)
    assert first.done == first.total == n_slots and first.failed == 0
    cached = CaptionCache(cfg.data.captions).load(model="tiny:llava")
    assert len(cached) == first.total and all(
        e["status"] == "ok" and e["caption"] for e in cached.values()
    )
    again = run_caption(cfg, tasks=["prp", "sa"], limit=2)
    assert again.total == 0 and again.skipped == first.total


@pytest.mark.parametrize(
    ("allow_private", "url_reason"),
    [("true", "cannot fetch"), ("false", "resolves to 127.0.0.1, a loopback address: refused")],
)
def test_bad_images_are_recorded_as_na_and_retried_on_request(
    tmp_path, sample_rows, allow_private, url_reason
):
    rows = [
        dict(r) for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "train"
    ][:4]
    rows[1]["images"] = json.dumps(["../../secret.png"])
    rows[2]["images"] = json.dumps(["http://127.0.0.1:9/gone.png"])
    data = write_jsonl(tmp_path / "rows" / "rows.jsonl", rows)
    shutil.copytree(REPO / "data/sample/images", tmp_path / "rows" / "images")
    cfg = _cfg(
        tmp_path, f"data.source={data}", "caption.fetch_retries=0", "caption.fetch_timeout_s=1",
        f"data.allow_private_urls={allow_private}",
    )  # fmt: skip
    summary = run_caption(cfg)
    assert (summary.done, summary.failed) == (2, 2)
    entries = CaptionCache(cfg.data.captions).load(model="tiny:llava")
    failed = {e["image"]: e for e in entries.values() if e["status"] == "failed"}
    assert (
        failed["../../secret.png"]["caption"] == "NA"
        and "outside the data root" in failed["../../secret.png"]["reason"]
    )
    assert url_reason in failed["http://127.0.0.1:9/gone.png"]["reason"]
    assert run_caption(cfg).total == 0  # failures are not retried by default
    assert run_caption(cfg, retry_failed=True).total == 2


def test_two_shards_merge_to_the_single_process_result(tmp_path, monkeypatch):
    single = _cfg(tmp_path / "one")
    run_caption(single, tasks=["cc", "sr"], limit=2)
    sharded = _cfg(tmp_path / "two")
    totals = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        totals.append(run_caption(sharded, tasks=["cc", "sr"], limit=2).total)
    assert len(list(Path(sharded.data.captions).glob("r0000-*.jsonl"))) == 1
    assert len(list(Path(sharded.data.captions).glob("r0001-*.jsonl"))) == 1
    a = CaptionCache(single.data.captions).load(model="tiny:llava")
    b = CaptionCache(sharded.data.captions).load(model="tiny:llava")
    assert sum(totals) == len(a) and abs(totals[0] - totals[1]) <= 1
    assert {k: v["caption"] for k, v in a.items()} == {k: v["caption"] for k, v in b.items()}


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_every_slot_exactly_once(tmp_path):
    cmd = [sys.executable, "-m", "caslie.cli", "caption", "--config", "configs/caption/demo.yaml",
           f"data.captions={tmp_path / 'captions'}", f"data.cache_dir={tmp_path / 'c'}", "caption.batch_size=2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    lines = 0
    while time.time() < deadline and proc.poll() is None:
        lines = (
            sum(f.read_bytes().count(b"\n") for f in (tmp_path / "captions").glob("*.jsonl"))
            if (tmp_path / "captions").exists()
            else 0
        )
        if lines >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = sum(1 for _ in read_shards(tmp_path / "captions"))
    assert done_before > 0
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    entries = list(read_shards(tmp_path / "captions"))
    counts = Counter((e["row_id"], e["image_index"]) for e in entries)
    cfg = _cfg(tmp_path)
    expected = {(r.id, j) for r in _slots(cfg) for j in range(len(r.images))}
    assert set(counts) == expected  # nothing lost
    assert set(counts.values()) == {1}  # nothing done twice
    assert f"{len(expected) - done_before} done" in rerun.stdout


def _reference_caption_prompt(row: dict) -> list[str]:
    """A transcription of the published template.py:caption_prompt strings."""
    inp, task = json.loads(row["input"]), row["task"]
    if task == "multiclass_product_classification":
        return [
            "The caption should be helpful to predict the relevance between the user's query: '{}', and product: '{}'.".format(
                inp["query"], inp["product title"]
            )
        ]
    if task == "product_substitute_identification":
        return [
            "The caption should be helpful to predict if the product: '{}' can serve as a functional substitute for the user's query: '{}'.".format(
                inp["query"], inp["product title"]
            )
        ]
    if task == "product_relation_prediction":
        text = "The title of the product in the image is '{}'. The caption should be helpful to predict the relation between this product and the other product '{}'."
        return [
            text.format(inp["product 1"], inp["product 2"]),
            text.format(inp["product 2"], inp["product 1"]),
        ]
    if task == "sentiment_analysis":
        return [
            "The caption should be helpful to identify the user's sentiment from the review: {}.".format(
                inp["review"]
            )
        ]
    if task == "answerability_prediction":
        return [
            "The caption should be helpful to identify if the product-related question: {}, is answerable.".format(
                inp["question"]
            )
        ]
    if task == "sequential_recommendation":
        text = "The caption should be helpful to recommend the next product the user is most likely to purchase by analyzing the user's intent based on the user's purchase history. Here is the title of the profuct in the image: {}."
        ops = json.loads(row["options"])
        return [text.format(x.split(": ", 1)[-1]) for x in inp] + [
            text.format(o.split(": ", 1)[-1]) for o in ops
        ]
    return [
        "The caption should be helpful to identify the product's fine-grained category. Here is the product title: {}.".format(
            inp["title"]
        )
    ]


LEADS = {
    "mllama": "Please generate a concise and informative caption for the product in the image within 50 words. ",
    "llava_next": "Please generate a concise and informative caption for the product in the image. ",
    "llava": "Please generate an informative caption for the product in the image. ",
}


@pytest.mark.parametrize("backend", sorted(LEADS))
def test_reference_prompts_equal_the_published_code_on_every_sample_image(
    backend, tmp_path, sample_rows
):
    cfg = _cfg(tmp_path)
    assert cfg.caption.prompts == "reference" and cfg.caption.max_new_tokens == 24  # demo budget
    split_map = cfg.data.split_map
    for row in sample_rows:
        record = parse_row(row, "sample", split_map)
        expected = _reference_caption_prompt(row)
        assert len(expected) == len(record.images)
        for j, text in enumerate(expected):
            assert instruction_for(record, j, cfg.caption, backend) == LEADS[backend] + text


def test_reference_clean_up_and_the_llava15_prompt_format(tmp_path):
    assert clean_reference("A red\tdrill\nwith case ", "mllama") == "A red drill with case"
    assert (
        clean_reference('"quoted"', "llava_next") == "quoted"
        and clean_reference("x", "llava") == "NA"
    )
    processor = load_processor(Checkpoint("tiny:llava"))
    assert render_caption_prompt(processor, "llava", "Describe it.", raw=True) == (
        "USER: <image>\nDescribe it. ASSISTANT:"
    )
    assert render_caption_prompt(processor, "blip-2", "Describe it.") == ""


def test_a_changed_image_is_captioned_again_and_its_old_caption_never_used(tmp_path, sample_rows):
    from caslie.data.captions import CaptionSource

    rows = [
        dict(r) for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "train"
    ][:3]
    data = write_jsonl(tmp_path / "rows" / "rows.jsonl", rows)
    shutil.copytree(REPO / "data/sample/images", tmp_path / "rows" / "images")
    cfg = _cfg(tmp_path, f"data.source={data}", "data.tasks=[sa]", "data.fusion=uia")
    assert run_caption(cfg).done == 3
    records = load_records(cfg.data, splits=["train"])[0]
    changed = tmp_path / "rows" / records[1].images[0]
    other = next(
        p for p in (REPO / "data/sample/images").iterdir() if p.read_bytes() != changed.read_bytes()
    )
    changed.write_bytes(other.read_bytes())
    source = CaptionSource(cfg.data)
    assert [source.get(r)[0] is not None for r in records] == [True, False, True]
    assert source.stale == 1
    again = run_caption(cfg)
    assert (again.total, again.skipped) == (1, 2)
    assert all(CaptionSource(cfg.data).get(r)[0] is not None for r in records)


def test_windows_are_sorted_failures_first_then_by_size_where_it_counts_then_by_prompt():
    from PIL import Image

    def image(w, h):
        return Image.new("RGB", (w, h))

    fetched = {"a": image(40, 30), "b": image(30, 40), "c": ImageError("gone"), "d": image(40, 30),
               "e": image(30, 40), "f": image(30, 40)}  # fmt: skip
    keys = [(ref, "p" * n) for ref, n in zip("abcdef", (5, 1, 9, 2, 7, 3), strict=True)]
    got = list(
        prefetched_batches(keys, 2, lambda k: fetched[k[0]], batch_order("mllama"), window=2)
    )
    # Windows of 4 keys, each sorted before it is cut into batches of 2.
    assert [[k[0] for k in b] for b, _ in got] == [["c", "b"], ["d", "a"], ["f", "e"]]
    assert all(r is fetched[k[0]] for b, res in got for k, r in zip(b, res, strict=True))
    plain = list(
        prefetched_batches(keys, 2, lambda k: fetched[k[0]], batch_order("llava"), window=2)
    )
    assert [[k[0] for k in b] for b, _ in plain] == [["c", "b"], ["d", "a"], ["f", "e"]]
    # e (30x40, a longer prompt) goes before a (40x30) where the size sets the image tokens only.
    assert batch_order("llava_next")(keys[4], fetched["e"]) < batch_order("llava_next")(
        keys[0], fetched["a"]
    )
    assert batch_order("llava")(keys[0], fetched["a"]) < batch_order("llava")(keys[4], fetched["e"])


def test_batches_prepared_ahead_caption_as_one_image_at_a_time(tmp_path):
    cfg = _cfg(tmp_path)
    records = load_records(cfg.data, splits=["val"])[0][:6]
    slots = [(r, j) for r in records for j in range(len(r.images))]
    root, limits = default_image_root(cfg.data.source), ImageLimits(size=cfg.caption.image_size)
    images = [load_image(r.images[j], root, limits) for r, j in slots]
    prompts = [instruction_for(r, j, cfg.caption) for r, j in slots]
    captioner = Captioner(cfg.caption)
    single = [captioner.caption([im], [p])[0] for im, p in zip(images, prompts, strict=True)]
    work = [(list(range(at, at + 3)), images[at : at + 3], prompts[at : at + 3])
            for at in range(0, len(slots), 3)]  # fmt: skip
    for ahead in (True, False):
        got = {i: t for rows, texts in caption_ahead(captioner, work, ahead=ahead)
               for i, t in zip(rows, texts, strict=True)}  # fmt: skip
        assert [got[i] for i in range(len(slots))] == single


def test_caption_logs_progress_with_rate_and_eta(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(caslie.jobs, "PROGRESS_INTERVAL_S", 0.0)  # a line after every batch
    cfg = _cfg(tmp_path, "caption.batch_size=2")
    with caplog.at_level(logging.INFO, logger="caslie.captioning"):
        summary = run_caption(cfg, tasks=["sa"], limit=2)
    lines = [r.getMessage() for r in caplog.records if r.name == "caslie.captioning"]
    head = "captioning with tiny:llava: "
    running = [m for m in lines if re.fullmatch(
        re.escape(head) + r"\d+/\d+ images \(\d+\.\d%\), \d+\.\d images/s, ETA \d+:\d\d:\d\d", m)]  # fmt: skip
    assert len(running) >= 2 and running[-1].startswith(f"{head}{summary.done}/{summary.done} ")
    assert re.fullmatch(re.escape(f"{head}{summary.done}/{summary.done} images in ")
                        + r"\d+:\d\d:\d\d, \d+\.\d images/s", lines[-1])  # fmt: skip

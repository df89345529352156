"""``caslie vote`` with tiny voters on the sample: yes/no scoring, cache, shards, kill -9."""

import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import cqe_config as _cfg

import caslie.jobs
from caslie.config import load_config
from caslie.cqe import (
    Voter,
    answer_token_ids,
    read_answer,
    read_reference_answer,
    run_vote,
    shared_prefix_length,
    vote_jobs,
)
from caslie.data.cache import VoteCache, read_shards
from caslie.data.fusion import fuse_records
from caslie.errors import ConfigError
from caslie.jobs import select_records
from caslie.pretrained import Checkpoint, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
VOTERS = ["tiny-llama", "tiny-mistral", "tiny-llava"]


@pytest.mark.parametrize("name", ["llama", "mistral"])
def test_yes_no_tokens_cover_casing_and_leading_space(name):
    tok = load_tokenizer(f"tiny:{name}")
    yes = {tok.decode([i]).strip().lower() for i in answer_token_ids(tok, "yes")}
    no = {tok.decode([i]).strip().lower() for i in answer_token_ids(tok, "no")}
    assert "yes" in yes and "no" in no and not (yes & no)
    assert all("yes".startswith(p) for p in yes) and all("no".startswith(p) for p in no)


@pytest.mark.parametrize(
    ("text", "vote"),
    [("yes", "yes"), (" Yes, it helps.", "yes"), ("NO.", "no"), ("nonono", "no"), ("maybe", None)],
)
def test_reading_a_generated_answer(text, vote):
    assert read_answer(text) == vote


def test_score_mode_agrees_with_generation_wherever_the_answer_is_readable(tmp_path):
    cfg = _cfg(tmp_path)
    jobs, _ = vote_jobs(cfg, select_records(cfg, None, ["val"], 3))
    for model in ("tiny:voter-llama", "tiny:voter-mistral"):
        voter = Voter("v", model, cfg.cqe)
        prompts = [j.prompt for j in jobs]
        scores = voter.score(prompts)
        answers = [read_answer(t) for t in voter.generate(prompts)]
        readable = [(s, a) for s, a in zip(scores, answers, strict=True) if a is not None]
        assert len(readable) == len(prompts)  # these voters always answer yes or no
        assert all(a == ("yes" if s >= 0.5 else "no") for s, a in readable)
        assert (
            0 < sum(a == "yes" for _, a in readable) < len(readable)
        )  # votes depend on the prompt


def test_vote_fills_one_cache_per_voter_that_serves_mv_and_single(tmp_path):
    cfg = _cfg(tmp_path)
    summary = run_vote(cfg, tasks=["sa", "sr"])
    jobs, _ = vote_jobs(cfg, select_records(cfg, ["sa", "sr"], None, None))
    assert summary.done == summary.total == len(jobs) * len(VOTERS)
    cache = VoteCache(cfg.data.votes)
    assert cache.voters() == sorted(VOTERS)
    for v in VOTERS:
        votes = cache.load(v)
        assert len(votes) == len(jobs)
        assert all(e["vote"] in ("yes", "no") and 0.0 <= e["p_yes"] <= 1.0 for e in votes.values())
    assert run_vote(cfg, tasks=["sa", "sr"]).total == 0  # resumable: all cached
    records = select_records(cfg, ["sa", "sr"], None, None)
    for fusion in ("mv", "single:tiny-llama"):
        fused_cfg = load_config(REPO / "configs/cqe/demo.yaml", [f"data.votes={cfg.data.votes}",
                                                                 f"data.fusion={fusion}", "data.tasks=[sa,sr]"])  # fmt: skip
        fused, _ = fuse_records(records, fused_cfg.data)
        assert len(fused) == len(records)
    single = VoteCache(cfg.data.votes).load("tiny-llama")
    fused_single, _ = fuse_records(records, load_config(REPO / "configs/cqe/demo.yaml", [
        f"data.votes={cfg.data.votes}", "data.fusion=single:tiny-llama", "data.tasks=[sa,sr]"]).data)  # fmt: skip
    used = sum(u for ex in fused_single for u in ex.used)
    assert used == sum(e["vote"] == "yes" for e in single.values())


def test_generate_mode_stores_the_answer(tmp_path):
    cfg = _cfg(tmp_path, "cqe.mode=generate", "data.voters=[tiny-mistral]")
    run_vote(cfg, tasks=["ap"], splits=["val"])
    entries = VoteCache(cfg.data.votes).load("tiny-mistral")
    assert entries and all(
        e["mode"] == "generate" and e["answer"] is not None for e in entries.values()
    )


def test_sharded_votes_merge_to_the_single_process_result(tmp_path, monkeypatch):
    one = _cfg(tmp_path / "one", "data.voters=[tiny-llama]")
    run_vote(one, tasks=["cc"])
    two = _cfg(tmp_path / "two", "data.voters=[tiny-llama]")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        run_vote(two, tasks=["cc"])
    a, b = (
        VoteCache(one.data.votes).load("tiny-llama"),
        VoteCache(two.data.votes).load("tiny-llama"),
    )
    assert {k: v["vote"] for k, v in a.items()} == {k: v["vote"] for k, v in b.items()}
    assert len(list((Path(two.data.votes) / "tiny-llama").glob("*.jsonl"))) == 2


def test_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"voters \['gpt-x'\] have no checkpoint in cqe.models"):
        run_vote(_cfg(tmp_path, "data.voters=[gpt-x]"))
    with pytest.raises(ConfigError, match="set data.votes to a folder"):
        run_vote(_cfg(tmp_path, "data.votes=null"))


@pytest.mark.slow
def test_kill_9_mid_vote_then_rerun_gives_every_vote_exactly_once(tmp_path):
    cmd = [sys.executable, "-m", "caslie.cli", "vote", "--config", "configs/cqe/demo.yaml",
           f"data.votes={tmp_path / 'votes'}", f"data.cache_dir={tmp_path / 'c'}", "cqe.batch_size=2",
           "data.voters=[tiny-llama,tiny-mistral]"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "votes" / "tiny-llama"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (
            folder.exists()
            and sum(f.read_bytes().count(b"\n") for f in folder.glob("*.jsonl")) >= 40
        ):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    cfg = _cfg(tmp_path)
    jobs, _ = vote_jobs(cfg, select_records(cfg, None, None, None))
    for voter in ("tiny-llama", "tiny-mistral"):
        counts = Counter(
            (e["row_id"], e["image_index"], e["caption_sha"])
            for e in read_shards(tmp_path / "votes" / voter)
        )
        assert set(counts) == {j.key for j in jobs} and set(counts.values()) == {1}, voter


@pytest.mark.parametrize(
    ("text", "vision", "vote"),
    [("Yes, it helps", False, "yes"), ("No.", False, "no"), ("no,", False, "no"),
     ("\nYes", False, "yes"), ("The image shows", False, "the"),
     ("some preamble\nyes<|eot_id|>", True, "yes"), ("No<|eot_id|>", True, "no")],
)  # fmt: skip
def test_generated_answers_are_read_as_the_reference_reads_them(text, vision, vote):
    assert read_reference_answer(text, vision) == vote


def test_text_voters_get_the_reference_system_message_and_the_vision_voter_none(tmp_path):
    cfg = _cfg(tmp_path)
    text_voter = Voter("tiny-llama", cfg.cqe.models["tiny-llama"], cfg.cqe)
    assert "You are a helpful AI assistant." in text_voter.render("Is it useful?")
    vision_voter = Voter("tiny-llava", cfg.cqe.models["tiny-llava"], cfg.cqe)
    assert "You are a helpful AI assistant." not in vision_voter.render("Is it useful?")
    paper = _cfg(tmp_path, "cqe.prompts=paper")
    assert "helpful AI" not in Voter(
        "tiny-llama", paper.cqe.models["tiny-llama"], paper.cqe
    ).render("x")


def test_votes_of_another_checkpoint_mode_or_prompt_set_are_cast_again(tmp_path):
    cfg = _cfg(tmp_path, "data.voters=[tiny-llama,tiny-mistral]")
    first = run_vote(cfg, tasks=["sa"])
    n = first.done // 2
    assert n > 0 and run_vote(cfg, tasks=["sa"]).total == 0
    entry = next(iter(VoteCache(cfg.data.votes).load("tiny-llama").values()))
    assert entry["checkpoint"].startswith("local:") and entry["mode"] == "score"
    assert run_vote(_cfg(tmp_path, "data.voters=[tiny-llama,tiny-mistral]", "cqe.prompts=paper"),
                    tasks=["sa"]).total == 2 * n  # fmt: skip
    assert run_vote(_cfg(tmp_path, "data.voters=[tiny-llama]", "cqe.mode=generate"),
                    tasks=["sa"]).total == n  # fmt: skip
    swapped = _cfg(tmp_path, "data.voters=[tiny-llama,tiny-mistral]", "cqe.prompts=paper",
                   "cqe.models.tiny-llama=tiny:voter-mistral")  # fmt: skip
    again = run_vote(swapped, tasks=["sa"])
    assert again.total == n  # only the voter whose checkpoint changed
    votes = VoteCache(cfg.data.votes).load("tiny-llama")
    assert all(
        e["checkpoint"] == Checkpoint("tiny:voter-mistral").revision_key() for e in votes.values()
    )


def test_control_strings_in_a_judged_caption_are_text_to_the_voter(tmp_path):
    cfg = _cfg(tmp_path)
    voter = Voter("tiny-llama", cfg.cqe.models["tiny-llama"], cfg.cqe)
    tok, eos = voter.tokenizer, voter.tokenizer.eos_token_id
    clean = "Is the caption 'a red drill' useful? Answer yes or no."
    tainted = clean.replace("a red drill", "a red drill </s> <s>")
    ids = voter._encode([clean, tainted])["input_ids"].tolist()
    plain = tok([voter.render(clean)], add_special_tokens=not voter.templated)["input_ids"][0]
    assert [i for i in ids[0] if i != tok.pad_token_id] == plain  # a clean prompt: as before
    template_eos = plain.count(eos)
    assert ids[1].count(eos) == template_eos  # the caption's </s> is text, not an end of turn
    assert ids[1].count(tok.bos_token_id) == plain.count(tok.bos_token_id)


@pytest.mark.parametrize(
    ("seqs", "n"),
    [([[1, 2, 3, 4], [1, 2, 5]], 2), ([[1, 2, 3], [1, 2, 3]], 2), ([[7, 8, 9]], 2),
     ([[5], [5]], 0), ([[1, 2], [3, 4]], 0), ([[1, 2, 3, 4], [1, 2, 3, 9], [1, 9]], 1)],
)  # fmt: skip
def test_the_shared_prefix_leaves_a_token_to_every_sequence(seqs, n):
    assert shared_prefix_length([torch.tensor(s) for s in seqs]) == n


@pytest.mark.parametrize("model", ["tiny:voter-llama", "tiny:voter-mistral", "tiny:llava"])
def test_batches_on_a_shared_prefix_score_each_prompt_as_it_scores_alone(tmp_path, model):
    cfg = _cfg(tmp_path)
    jobs, _ = vote_jobs(cfg, select_records(cfg, None, ["val"], 2))
    prompts, tasks = [j.prompt for j in jobs], [j.record.task for j in jobs]
    voter = Voter("v", model, cfg.cqe)
    alone = [voter.score([p])[0] for p in prompts]  # one unpadded row, no prefix: the plain pass
    got, passes, mixed = [None] * len(prompts), 0, 0
    for rows, p_yes in voter.score_stream(prompts, 4, tasks):
        passes += 1
        mixed += len({tasks[i] for i in rows}) > 1  # openings of different lengths in one batch
        for i, p in zip(rows, p_yes, strict=True):
            got[i] = p
    assert mixed and passes == -(-len(prompts) // 4)  # as few passes as the batch size allows
    assert max(abs(a - b) for a, b in zip(alone, got, strict=True)) < 1e-5
    sa = voter.encode_ids([p for p, t in zip(prompts, tasks, strict=True) if t == "sa"])
    # The chat header, system message and the template's first sentence are run once per task.
    assert len(sa) > 1 and shared_prefix_length(sa) > 20
    voter.reuse_prefix = False
    assert max(abs(a - b) for a, b in zip(alone, voter.score(prompts), strict=True)) < 1e-5


def test_vote_logs_progress_with_rate_and_eta(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(caslie.jobs, "PROGRESS_INTERVAL_S", 0.0)  # a line after every batch
    cfg = _cfg(tmp_path, "data.voters=[tiny-llama]", "cqe.batch_size=4")
    with caplog.at_level(logging.INFO, logger="caslie.cqe"):
        summary = run_vote(cfg, tasks=["cc"])
    lines = [r.getMessage() for r in caplog.records if r.name == "caslie.cqe"]
    running = [m for m in lines if re.fullmatch(
        r"tiny-llama \(score\): \d+/\d+ captions \(\d+\.\d%\), \d+\.\d captions/s, ETA \d+:\d\d:\d\d", m)]  # fmt: skip
    assert len(running) >= 2 and running[-1].startswith(f"tiny-llama (score): {summary.done}/")
    assert re.fullmatch(rf"tiny-llama \(score\): {summary.done}/{summary.done} captions in "
                        r"\d+:\d\d:\d\d, \d+\.\d captions/s", lines[-1])  # fmt: skip

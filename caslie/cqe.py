"""CQE caption-quality voting (``caslie vote``): each voter judges whether a caption helps the task.

Each voter sees the Appendix C prompt for the caption's task and product in its own chat template.
``score`` mode (default) runs one forward pass per batch and compares the next-token probability of
"yes" against "no" (every first token that reads yes/Yes/" yes"... counts); ``generate`` mode
reproduces the reference scripts: generate up to 16 tokens and read the start. Votes are stored per
voter with the probability of yes, so ``mv`` over any voter subset and ``single:<voter>`` come from
the same cache.
"""

from __future__ import annotations

import gc
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from caslie.config import Config, CQEConfig
from caslie.data.cache import VoteCache, text_hash
from caslie.data.captions import CaptionSource, usable_caption
from caslie.data.tokenize import control_strings, encode_with_row_text, holds_control_text
from caslie.data.votes import VoteTables, decide
from caslie.errors import CaslieError, ConfigError
from caslie.jobs import (
    JobSummary,
    batches,
    local_device,
    my_share,
    progress,
    rank_world,
    select_records,
)
from caslie.pretrained import (
    Checkpoint,
    load_model,
    load_processor,
    load_tokenizer,
    model_config,
    pad_for_generation,
)
from caslie.prompts import REFERENCE_CQE, REFERENCE_SYSTEM, cqe_prompt
from caslie.record import Record
from caslie.tasks import TASKS

log = logging.getLogger(__name__)

VLM_TYPES = {
    "mllama",
    "llava",
    "llava_next",
}  # voters loaded with their VLM class, used on text only


@dataclass(frozen=True)
class VoteJob:
    """One caption for one voter to judge."""

    record: Record
    index: int
    caption: str
    prompt: str

    @property
    def key(self) -> tuple[str, int, str]:
        return self.record.id, self.index, text_hash(self.caption)


def cqe_template(task: str, prompt_set: str) -> str:
    """The CQE template of ``task`` in a prompt set (its hash keys the votes made with it)."""
    return REFERENCE_CQE[task] if prompt_set == "reference" else TASKS[task].cqe_template


def read_answer(text: str) -> str | None:
    """``yes``/``no`` from the start of a generated answer, else ``None``."""
    match = re.match(r"^\W*(yes|no)", text.strip().lower())
    return match.group(1) if match else None


def answer_token_ids(tokenizer: Any, word: str) -> list[int]:
    """Ids of every first token that starts ``word`` in some casing and spacing ("yes", "Yes", " yes").

    A tokenizer that splits the word counts its first piece (the model commits to it first).
    """
    ids = set()
    for variant in (word, word.capitalize(), word.upper()):
        for text in (variant, " " + variant):
            toks = tokenizer(text, add_special_tokens=False)["input_ids"]
            piece = tokenizer.decode(toks[:1]).strip().lower() if toks else ""
            if piece and word.startswith(piece):
                ids.add(toks[0])
    if not ids:
        raise ConfigError(
            f"this voter's tokenizer has no token that starts '{word}': it cannot vote in "
            f"cqe.mode=score (use cqe.mode=generate, or another checkpoint in cqe.models)"
        )
    return sorted(ids)


class Voter:
    """One CQE voter: an instruction-tuned LLM (or a VLM used on text) with its tokenizer.

    Args:
        name: Voter name (the cache subfolder).
        model_id: Checkpoint.
        cfg: The CQE config.
        device: Where the model runs.
    """

    def __init__(self, name: str, model_id: str, cfg: CQEConfig, device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        ckpt = Checkpoint.from_config(cfg, model_id, what=f"voter '{name}'")
        self.name, self.cfg, self.device = name, cfg, device
        if model_config(ckpt).model_type in VLM_TYPES:
            self.tokenizer = load_processor(ckpt).tokenizer
            pad_for_generation(self.tokenizer)
            model_cls = AutoModelForImageTextToText
        else:
            self.tokenizer = load_tokenizer(ckpt, pad="eos")
            model_cls = AutoModelForCausalLM
        self.vision = model_cls is AutoModelForImageTextToText
        self.model = load_model(ckpt, model_cls).to(device).eval()
        self.yes_ids = answer_token_ids(self.tokenizer, "yes")
        self.no_ids = answer_token_ids(self.tokenizer, "no")
        self.templated = bool(getattr(self.tokenizer, "chat_template", None))
        self.controls = control_strings(self.tokenizer)

    def render(self, instruction: str) -> str:
        """The instruction as the voter receives it (:func:`render_vote_prompt`)."""
        return render_vote_prompt(self.tokenizer, instruction, self.cfg.prompts, self.vision)

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        texts = [self.render(p) for p in prompts]
        add = not self.templated
        if holds_control_text(prompts, self.controls):
            # Row text or a caption holding "</s>" or "[INST]" is judged as text, never control.
            ids = [
                encode_with_row_text(self.tokenizer, t, p, add)
                for t, p in zip(texts, prompts, strict=True)
            ]
            enc = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=add)
        return {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }

    @torch.no_grad()
    def score(self, prompts: list[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) for the next token after each prompt: one forward pass."""
        enc = self._encode(prompts)
        logits = self.model(**enc, use_cache=False, logits_to_keep=1).logits[:, -1, :].float()
        probs = logits.softmax(dim=-1)
        p_yes = probs[:, self.yes_ids].sum(dim=-1)
        p_no = probs[:, self.no_ids].sum(dim=-1)
        return (p_yes / (p_yes + p_no).clamp_min(1e-30)).tolist()

    @torch.no_grad()
    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers of up to ``cqe.max_new_tokens`` tokens (the reference way)."""
        enc = self._encode(prompts)
        out = self.model.generate(**enc, max_new_tokens=max_new_tokens or self.cfg.max_new_tokens, do_sample=False,
                                  pad_token_id=self.tokenizer.pad_token_id)  # fmt: skip
        return self.tokenizer.batch_decode(
            out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )

    def close(self) -> None:
        """Free the model's memory before the next voter loads."""
        del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vote_jobs(cfg: Config, records: list[Record]) -> tuple[list[VoteJob], int]:
    """Every captioned image slot of ``records`` (captions from ``data.captions``), and the number of
    slots without a usable caption (missing or failed: nothing to judge)."""
    source = CaptionSource(cfg.data)
    jobs, uncaptioned = [], 0
    for r in records:
        captions = source.get(r) or (None,) * len(r.images)
        for j, caption in enumerate(captions):
            if not usable_caption(caption, cfg.data.na_captions):
                uncaptioned += 1
                continue
            jobs.append(VoteJob(r, j, caption, cqe_prompt(r, j, caption, cfg.cqe.prompts)))
    return jobs, uncaptioned


def render_vote_prompt(tokenizer: Any, instruction: str, prompt_set: str, vision: bool) -> str:
    """The instruction as a user turn in the voter's chat template (as is without one); with the
    reference prompts, a text voter also gets the reference system message."""
    if not getattr(tokenizer, "chat_template", None):
        return instruction
    messages = [{"role": "user", "content": instruction}]
    if prompt_set == "reference" and not vision:
        messages.insert(0, {"role": "system", "content": REFERENCE_SYSTEM})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _voter_tokenizer(name: str, model_id: str, cfg: CQEConfig) -> tuple[Any, bool]:
    """A voter's tokenizer (no weights) and whether the voter is a vision model."""
    ckpt = Checkpoint.from_config(cfg, model_id, what=f"voter '{name}'")
    if model_config(ckpt).model_type in VLM_TYPES:
        return load_processor(ckpt).tokenizer, True
    return load_tokenizer(ckpt, pad="eos"), False


def dry_run(cfg: Config, tasks: list[str] | None = None, splits: list[str] | None = None,
            limit: int | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """The prompts ``caslie vote`` would send, one dict per (row, image, voter), loading no weights.

    Each has ``id``, ``task``, ``split``, ``image_index``, ``voter``, ``caption``, ``prompt`` (the
    instruction) and ``chat`` (the exact text the voter receives, or ``None`` when its tokenizer
    cannot be loaded here, e.g. a hub id offline).
    """
    jobs, _ = vote_jobs(cfg, select_records(cfg, tasks, splits, limit))
    for name in cfg.data.voters:
        if name not in cfg.cqe.models:
            raise ConfigError(f"voter '{name}' has no checkpoint in cqe.models")
        try:
            tokenizer, vision = _voter_tokenizer(name, cfg.cqe.models[name], cfg.cqe)
        except CaslieError as err:
            log.warning("no chat text for voter %s in the dry run: %s", name, err)
            tokenizer, vision = None, False
        for job in jobs:
            chat = (
                render_vote_prompt(tokenizer, job.prompt, cfg.cqe.prompts, vision)
                if tokenizer
                else None
            )
            yield {"id": job.record.id, "task": job.record.task, "split": job.record.split,
                   "image_index": job.index, "voter": name, "caption": job.caption,
                   "prompt": job.prompt, "chat": chat}  # fmt: skip


def read_reference_answer(text: str, vision: bool = False) -> str:
    """A generated answer read as the reference reads it: the first three characters (a vision
    voter's: of its last line, cut at the first "<"), without "." and ",", lower-cased."""
    head = text.split("\n")[-1].split("<")[0].strip() if vision else text.replace("\n", " ").strip()
    return head[:3].strip().strip(".").strip(",").lower()


def _vote_batch(voter: Voter, prompts: list[str], mode: str) -> list[dict[str, Any]]:
    if mode == "score":
        return [
            {"vote": "yes" if p >= 0.5 else "no", "p_yes": round(p, 6), "answer": None}
            for p in voter.score(prompts)
        ]
    # The reference's reading; an answer that is neither yes nor no stays as read (it is a vote of
    # its own under the plurality rule, and not a yes under the majority rule).
    return [{"vote": read_reference_answer(t, voter.vision), "p_yes": None, "answer": t}
            for t in voter.generate(prompts)]  # fmt: skip


def group_by_prompt(jobs: list[VoteJob]) -> dict[str, list[VoteJob]]:
    """Jobs by prompt text, longest prompt first: a prompt is judged once however many rows share it
    (an SR product in many users' histories), and batches hold prompts of similar length."""
    groups: dict[str, list[VoteJob]] = {}
    for job in jobs:
        groups.setdefault(job.prompt, []).append(job)
    return {p: groups[p] for p in sorted(groups, key=len, reverse=True)}


def agreement(voter: Voter, jobs: list[VoteJob], batch_size: int) -> dict[str, Any]:
    """Compare ``score`` votes with ``generate`` answers on the same prompts.

    Returns:
        ``rows`` compared, ``readable`` (generated answers that start with yes or no) and
        ``agree`` (score votes equal to those answers).
    """
    readable = agree = 0
    for batch in batches(jobs, batch_size):
        prompts = [j.prompt for j in batch]
        for p, text in zip(voter.score(prompts), voter.generate(prompts), strict=True):
            answer = read_answer(text)
            if answer is not None:
                readable += 1
                agree += answer == ("yes" if p >= 0.5 else "no")
    return {"rows": len(jobs), "readable": readable, "agree": agree}


def run_vote(cfg: Config, tasks: list[str] | None = None, splits: list[str] | None = None,
             limit: int | None = None, compare: bool = False) -> JobSummary:  # fmt: skip
    """Vote on every captioned slot not yet judged by each voter in ``data.voters`` (this rank's share).

    Raises:
        ConfigError: no ``data.votes`` folder, or a voter without a checkpoint in ``cqe.models``.
    """
    if not cfg.data.votes:
        raise ConfigError(
            "caslie vote writes a vote cache: set data.votes to a folder (e.g. cache/votes)"
        )
    unknown = [v for v in cfg.data.voters if v not in cfg.cqe.models]
    if unknown:
        raise ConfigError(
            f"voters {unknown} have no checkpoint in cqe.models (known: {', '.join(cfg.cqe.models)})"
        )
    start = time.perf_counter()
    rank, world = rank_world()
    cache = VoteCache(cfg.data.votes, cfg.data.on_error)
    all_jobs, uncaptioned = vote_jobs(cfg, select_records(cfg, tasks, splits, limit))
    summary = JobSummary(
        "vote", extra={"captions to judge": len(all_jobs), "slots without a caption": uncaptioned}
    )
    device = local_device()
    # Deal captions to ranks before consulting the cache: a rank owns the same ones whatever the
    # others have written meanwhile.
    my_jobs = my_share(all_jobs, rank, world)
    template = {t: text_hash(cqe_template(t, cfg.cqe.prompts)) for t in TASKS}
    other_answers: dict[str, int] = {}
    for name in cfg.data.voters:
        ckpt = Checkpoint.from_config(cfg.cqe, cfg.cqe.models[name], what=f"voter '{name}'")
        cast_by = {"checkpoint": ckpt.revision_key(), "mode": cfg.cqe.mode}
        # A cached vote counts when this voter would cast it now: the same checkpoint revision,
        # mode and prompt template. Any other is cast again, never reused.
        cached = cache.load(name, made_by=cast_by)
        mine = [j for j in my_jobs
                if cached.get(j.key, {}).get("template") != template[j.record.task]]  # fmt: skip
        summary.skipped += len(my_jobs) - len(mine)
        summary.total += len(mine)
        if not mine and not compare:
            continue
        voter = Voter(name, cfg.cqe.models[name], cfg.cqe, device)
        bar = progress(len(mine), f"{name} ({cfg.cqe.mode})", "caption")
        groups = group_by_prompt(mine)
        with cache.writer(name, rank) as writer:
            for batch in batches(list(groups), cfg.cqe.batch_size):
                for prompt, vote in zip(
                    batch, _vote_batch(voter, batch, cfg.cqe.mode), strict=True
                ):
                    for job in groups[prompt]:
                        row_id, index, sha = job.key
                        writer.write({"row_id": row_id, "image_index": index, "voter": name, "caption_sha": sha,
                                      "template": template[job.record.task], **cast_by, **vote})  # fmt: skip
                        summary.done += 1
                        if vote["vote"] not in ("yes", "no"):
                            other_answers[name] = other_answers.get(name, 0) + 1
                    bar.update(len(groups[prompt]))
        bar.close()
        if compare:
            summary.extra[f"score vs generate, {name}"] = agreement(
                voter, my_jobs, cfg.cqe.batch_size
            )
        voter.close()
    for name, n in other_answers.items():
        summary.extra[f"answers neither yes nor no, {name}"] = n
    summary.extra["caption used % (mv over data.voters)"] = _used_pct(cache, cfg, all_jobs)
    summary.seconds = time.perf_counter() - start
    return summary


def _used_pct(cache: VoteCache, cfg: Config, jobs: list[VoteJob]) -> float | None:
    tables = VoteTables(cache, cfg.data.voters)
    decided = used = 0
    for job in jobs:
        votes = tables.votes(job.key)
        if len(votes) == len(cfg.data.voters):
            decided += 1
            used += decide(votes, cfg.data.voters, cfg.data.mv_tie, cfg.data.mv_rule)
    return round(100 * used / decided, 1) if decided else None

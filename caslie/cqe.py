"""CQE caption-quality voting (``caslie vote``): each voter judges whether a caption helps the task.

Each voter sees the Appendix C prompt for the caption's task and product in its own chat template.
``score`` mode (default) runs one forward pass per batch and compares the next-token probability of
"yes" against "no" (every first token that reads yes/Yes/" yes"... counts); ``generate`` mode
reproduces the reference scripts: generate up to 16 tokens and read the start. Votes are stored per
voter with the probability of yes, so ``mv`` over any voter subset and ``single:<voter>`` come from
the same cache.

Score mode judges each distinct prompt once, in batches of prompts of one template sorted by token
length (little padding); the opening those prompts share (chat header, system message, the
template's first sentences) runs through the model once and its key/value cache serves every batch.
"""

from __future__ import annotations

import gc
import inspect
import logging
import re
import time
from collections.abc import Hashable, Iterator
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

NO_PREFIX_REUSE = {"mllama"}
"""Voters scored without a shared prefix cache: Llama-3.2-Vision's cross-attention layers keep
states of their own in the cache, which a text-only prefix does not fill."""

ENCODE_CHUNK = 1024
"""Prompts rendered and tokenised per tokenizer call (the ids are kept as int32 tensors, so a large
share of prompts stays small in memory)."""


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


@dataclass(frozen=True)
class Prefix:
    """An opening shared by several prompts, run once: ``n`` tokens and each layer's (keys,
    values), batch of one."""

    n: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]


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
        model_type = model_config(ckpt).model_type
        if model_type in VLM_TYPES:
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
        # transformers renamed ``past_key_values`` to ``cache`` during 5.x.
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.reuse_prefix = model_type not in NO_PREFIX_REUSE
        """Whether score mode runs a shared prompt opening once (:meth:`score_stream`)."""

    def render(self, instruction: str) -> str:
        """The instruction as the voter receives it (:func:`render_vote_prompt`)."""
        return render_vote_prompt(self.tokenizer, instruction, self.cfg.prompts, self.vision)

    def encode_ids(self, prompts: list[str]) -> list[torch.Tensor]:
        """Token ids of each prompt as the voter receives it, unpadded (1-D int32 tensors, on CPU).

        A prompt holding a control string ("</s>", "[INST]") is tokenised by parts, so that its
        row text or caption is judged as text; every other prompt is tokenised as one string.
        """
        out: list[torch.Tensor] = []
        for begin in range(0, len(prompts), ENCODE_CHUNK):
            out += self._encode_chunk(prompts[begin : begin + ENCODE_CHUNK])
        return out

    def _encode_chunk(self, prompts: list[str]) -> list[torch.Tensor]:
        texts = [self.render(p) for p in prompts]
        add = not self.templated
        tainted = [holds_control_text([p], self.controls) for p in prompts]
        clean = [t for t, bad in zip(texts, tainted, strict=True) if not bad]
        joint = iter(self.tokenizer(clean, add_special_tokens=add)["input_ids"] if clean else [])
        return [
            torch.tensor(
                encode_with_row_text(self.tokenizer, t, p, add) if bad else next(joint),
                dtype=torch.int32,
            )
            for t, p, bad in zip(texts, prompts, tainted, strict=True)
        ]

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """A left-padded batch of :meth:`encode_ids` (for ``generate``)."""
        ids = [i.tolist() for i in self.encode_ids(prompts)]
        enc = self.tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")
        return {
            k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")
        }

    def score(self, prompts: list[str]) -> list[float]:
        """P(yes) / (P(yes) + P(no)) for the next token after each prompt: one forward pass (after
        the prompts' shared opening, run once)."""
        out = [0.0] * len(prompts)
        for rows, p_yes in self.score_stream(prompts, max(1, len(prompts))):
            for row, p in zip(rows, p_yes, strict=True):
                out[row] = p
        return out

    @torch.inference_mode()
    def score_stream(self, prompts: list[str], batch_size: int,
                     groups: list[Hashable] | None = None) -> Iterator[tuple[list[int], list[float]]]:  # fmt: skip
        """P(yes) of every prompt, batch by batch: ``(indices into prompts, P(yes) of each)``.

        The opening shared by the prompts of a group (by default all prompts are one) runs once;
        a batch then runs only the rest of its prompts, on the key/value cache of each one's
        opening. Batches hold rests of similar length, longest first (so a batch that does not fit
        in memory fails at once), and may mix groups: there are as few forward passes as prompts
        allow.

        Args:
            prompts: The instructions.
            batch_size: Prompts per forward pass.
            groups: A key per prompt; prompts made from the same template share the most (the
                CQE prompts of one task).
        """
        ids = self.encode_ids(prompts)
        keys = groups if groups is not None else [None] * len(prompts)
        members: dict[Hashable, list[torch.Tensor]] = {}
        for key, seq in zip(keys, ids, strict=True):
            members.setdefault(key, []).append(seq)
        prefixes = {key: self._run_prefix(seqs) for key, seqs in members.items()}
        shared = [prefixes[key].n for key in keys]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]) - shared[i], reverse=True)
        for rows in batches(order, batch_size):
            yield rows, self._score_rest([ids[i] for i in rows], [prefixes[keys[i]] for i in rows])

    def _run_prefix(self, seqs: list[torch.Tensor]) -> Prefix:
        """The longest opening of ``seqs`` run once (an empty :class:`Prefix` where the backend
        does not reuse one or nothing is shared)."""
        n = shared_prefix_length(seqs) if self.reuse_prefix and len(seqs) > 1 else 0
        if n == 0:
            return Prefix(0, [])
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        prefix = seqs[0][:n].long().unsqueeze(0).to(self.device)
        self.model(input_ids=prefix, use_cache=True, logits_to_keep=1, **{self.cache_arg: cache})
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        if any(k.shape[-2] != n for k, _ in layers):  # a sliding window dropped part of it
            return Prefix(0, [])
        return Prefix(n, layers)

    def _batch_cache(self, prefixes: list[Prefix]) -> Any:
        """One key/value cache for a batch: each row's opening, padded on the left to the longest
        (``None`` when no row has one)."""
        width = max(p.n for p in prefixes)
        if width == 0:
            return None
        from transformers import DynamicCache

        rows: dict[int, tuple[Prefix, list[int]]] = {}
        for row, p in enumerate(prefixes):
            if p.n:
                rows.setdefault(id(p), (p, []))[1].append(row)
        template = next(p for p in prefixes if p.n).layers
        cache = DynamicCache(config=self.model.config)
        for index, (k0, _) in enumerate(template):
            shape = (len(prefixes), k0.shape[1], width, k0.shape[3])
            keys, values = k0.new_zeros(shape), k0.new_zeros(shape)
            for p, members in rows.values():
                k, v = p.layers[index]
                keys[members, :, width - p.n :] = k
                values[members, :, width - p.n :] = v
            cache.update(keys, values, index)
        return cache

    def _score_rest(self, seqs: list[torch.Tensor], prefixes: list[Prefix]) -> list[float]:
        """P(yes) after each sequence, given its opening ``prefixes[row]`` already run.

        Each row reads [padding, its opening, padding, the rest of its tokens]: the mask hides the
        padding, the positions run on from the opening, and the last column holds every row's last
        token (the only logits computed).
        """
        cache = self._batch_cache(prefixes)
        width = max(p.n for p in prefixes)
        rest = [s[p.n :] for s, p in zip(seqs, prefixes, strict=True)]
        length = max(len(r) for r in rest)
        input_ids = torch.full((len(rest), length), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rest), width + length), dtype=torch.long)
        positions = torch.zeros((len(rest), length), dtype=torch.long)
        for row, (r, p) in enumerate(zip(rest, prefixes, strict=True)):
            pad = length - len(r)
            input_ids[row, pad:] = r
            mask[row, width - p.n : width] = 1
            mask[row, width + pad :] = 1
            positions[row, pad:] = torch.arange(p.n, p.n + len(r))
        kwargs: dict[str, Any] = {"use_cache": False}
        if cache is not None:
            kwargs = {"use_cache": True, self.cache_arg: cache}
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=positions.to(self.device), logits_to_keep=1,
                            **kwargs).logits[:, -1, :].float()  # fmt: skip
        probs = logits.softmax(dim=-1)
        p_yes = probs[:, self.yes_ids].sum(dim=-1)
        p_no = probs[:, self.no_ids].sum(dim=-1)
        return (p_yes / (p_yes + p_no).clamp_min(1e-30)).tolist()

    @torch.inference_mode()
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


def shared_prefix_length(seqs: list[torch.Tensor]) -> int:
    """Length of the longest opening all ``seqs`` share, leaving at least one token to each."""
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for s in seqs[1:]:
        if n <= 0:
            return 0
        differ = (s[:n] != first[:n]).nonzero()
        if len(differ):
            n = int(differ[0])
    return max(n, 0)


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


def cast_votes(voter: Voter, groups: dict[str, list[VoteJob]], mode: str,
               batch_size: int) -> Iterator[tuple[list[str], list[dict[str, Any]]]]:  # fmt: skip
    """The votes on each distinct prompt of ``groups`` (:func:`group_by_prompt`), batch by batch:
    ``(prompts, their votes)``.

    Score mode batches the prompts of each task together (their template's opening runs once);
    generate mode batches them in the order of ``groups``, as the reference would read them.
    """
    prompts = list(groups)
    if mode == "score":
        tasks = [groups[p][0].record.task for p in prompts]
        for rows, p_yes in voter.score_stream(prompts, batch_size, tasks):
            yield (
                [prompts[i] for i in rows],
                [
                    {"vote": "yes" if p >= 0.5 else "no", "p_yes": round(p, 6), "answer": None}
                    for p in p_yes
                ],
            )
        return
    for batch in batches(prompts, batch_size):
        # The reference's reading; an answer that is neither yes nor no stays as read (a vote of
        # its own under the plurality rule, and not a yes under the majority rule).
        yield batch, [{"vote": read_reference_answer(t, voter.vision), "p_yes": None, "answer": t}
                      for t in voter.generate(batch)]  # fmt: skip


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
        bar = progress(len(mine), f"{name} ({cfg.cqe.mode})", "caption", log)
        groups = group_by_prompt(mine)
        with cache.writer(name, rank) as writer:
            for batch, votes in cast_votes(voter, groups, cfg.cqe.mode, cfg.cqe.batch_size):
                for prompt, vote in zip(batch, votes, strict=True):
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

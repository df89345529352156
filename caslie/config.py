"""Typed configuration: one schema with every default, YAML inheritance, CLI overrides, validation.

A run's config is built as ``schema <- base files <- config file <- overrides`` and then turned into
dataclass objects, so each section's ``__post_init__`` checks its values before anything heavy starts.
Overrides are OmegaConf dotlists (``optim.lr=3e-4``), the ``--optim.lr=3e-4`` form a W&B sweep agent
passes with ``${args}``, or ``--optim.lr 3e-4``; :func:`split_argv` finds them anywhere on a command
line. Each value's source (a file, the command line, the default) is kept for ``--print-config``,
and relative paths resolve by the one rule of :mod:`caslie.config_paths`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from caslie.cluster import AUTO, resolve_devices
from caslie.config_paths import OVERRIDE, resolve_paths
from caslie.errors import ConfigError, UnknownTaskError
from caslie.redact import env_interpolations, keep_secrets_out
from caslie.tasks import TASK_CODES, get_task

PAPER_VOTERS = [
    "llama-3.2-3b-instruct",
    "llama-3.1-8b-instruct",
    "llama-3.2-11b-vision-instruct",
    "mistral-7b-instruct-v0.3",
    "phi-3.5-mini-instruct",
]
"""The five CQE voters of the paper, as vote-cache names."""

SPLITS = ("train", "val", "test_ind", "test_ood")
"""Canonical split names."""

DEFAULT_SPLIT_MAP = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test_ind",
    "test/OOD": "test_ood",
    "test_ind": "test_ind",
    "test_ood": "test_ood",
}

FUSIONS = ("none", "uia", "mv")

CAPTIONS_FROM_DATASET = "dataset"
"""``data.captions`` value that reads captions from the rows' ``caption_info``."""


@dataclass
class RunConfig:
    """What the run is called, where it writes, and how it is seeded."""

    name: str = "caslie"
    """Run name: the run folder is ``<output_dir>/<name>``."""
    output_dir: str = "runs"
    """Parent folder of run folders."""
    seed: int = 42
    """Seed for Python, NumPy, torch and the batch samplers."""
    overwrite: bool = False
    """Start the run over: delete its checkpoints, predictions and metrics first. Without it, a
    finished run is left alone and an unfinished one needs ``--resume``. A requeued SLURM job never
    starts over: it resumes."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.name or ""):
            raise ConfigError(
                f"run.name '{self.name}' must be letters, digits, '.', '_' or '-' (it names a folder)"
            )


@dataclass
class DataConfig:
    """Where rows, captions and votes come from, and how they become training examples."""

    source: str = "NingLab/MMECInstruct"
    """Hub dataset id, a local .json/.jsonl/.parquet file or folder, or ``sample``."""
    hub_split: str = "train"
    """Split of the hub dataset that holds every row (MMECInstruct ships one ``train`` split)."""
    image_root: str | None = None
    """Folder that local image paths are relative to (default: the source's folder)."""
    tasks: list[str] = field(default_factory=lambda: ["all"])
    """Task codes to use (``[all]`` for the generalist model, one code for a task-specific one)."""
    train_split: str = "train"
    """Canonical split used for training."""
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test_ind", "test_ood"])
    """Canonical splits evaluated after training (``val`` also selects the best checkpoint)."""
    split_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_SPLIT_MAP))
    """Dataset ``split`` (or ``split/setting`` for a non-IND ``setting``) -> canonical split."""
    max_rows_per_task: int | None = None
    """Keep at most this many rows per task and split (first in file order); ``null`` keeps all."""
    on_error: str = "raise"
    """``raise`` stops at the first invalid row; ``skip`` drops it, counts and reports it."""
    fusion: str = "mv"
    """Caption fusion: ``none`` (text only), ``uia`` (always), ``mv`` (majority vote), ``single:<voter>``."""
    captions: str = "dataset"
    """Caption source: ``dataset`` (the rows' ``caption_info``) or a caption cache folder."""
    caption_model: str | None = None
    """Captioning model to read from a caption cache holding several (``null``: the only one)."""
    votes: str | None = None
    """Vote cache folder (one subfolder per voter); required by ``mv`` and ``single:``."""
    na_captions: str = "vote"
    """An "NA" caption (what captioning writes for an image it could not describe): ``vote`` treats
    it as any other caption, voted on and fused if kept (as the reference); ``drop`` never votes on
    or fuses it."""
    voters: list[str] = field(default_factory=lambda: list(PAPER_VOTERS))
    """Voters whose majority decides under ``mv``."""
    mv_rule: str = "plurality"
    """How ``mv`` decides: ``plurality`` (the reference: the most common answer over the voters in
    their order, a tie going to the earliest voter's answer; kept when it is "yes") or ``majority``
    (more yes than other answers, a tie going to ``mv_tie``)."""
    mv_tie: str = "no"
    """Outcome of a tied vote under ``mv_rule=majority`` (even number of voters): ``no`` or ``yes``."""
    prompt_template: str = "mistral"
    """``mistral`` (the paper's template, byte-exact), ``alpaca`` (eCeLLM's, which trained its Llama-2
    models) or ``chat`` (the tokenizer's chat template)."""
    max_length: int = 2048
    """Longest tokenised training example (eCeLLM's cutoff); a longer one is trimmed inside its
    input, keeping valid JSON (SR drops its oldest history items, other tasks shorten their longest
    text field), never the answer. Evaluation prompts are never trimmed."""
    pad_to_multiple_of: int = 8
    """Padded batch length is a multiple of this (tensor-core friendly)."""
    group_by_length: bool = True
    """Batch examples of similar length together to cut padding."""
    packing: bool = False
    """Lay each training micro-batch's examples end to end in one padding-free row, attention kept
    within each example (``caslie/data/packing.py``). The examples, steps and loss are the same as
    without it; only padding is gone."""
    image_size: int = 500
    """Images read by the FashionCLIP loaders are resized to fit this square first (the paper's
    medium size); the model's processor then sizes them for the vision tower."""
    num_workers: int = 2
    """DataLoader worker processes."""
    cache_dir: str = ".cache/caslie"
    """Where tokenised datasets are cached (keyed by every input that changes them)."""
    allow_private_urls: bool = False
    """Fetch image URLs that resolve to loopback, private, link-local or multicast addresses (an
    intranet image host); off, such URLs are refused after DNS resolution and after every redirect."""
    min_caption_coverage: float = 0.95
    """Under ``uia``/``mv``/``single:``, refuse to train when fewer than this share of a split's
    images have a caption (the error prints the ``caslie caption`` command that fills the gap)."""
    allow_changed: bool = False
    """Resume a checkpoint whose data fingerprint differs from the data now built (off: stop and
    say what changed)."""

    def __post_init__(self) -> None:
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"data.on_error must be 'raise' or 'skip', got '{self.on_error}'")
        fusion_kind, _, voter = self.fusion.partition(":")
        if fusion_kind not in FUSIONS + ("single",) or (fusion_kind == "single") != bool(voter):
            raise ConfigError(
                f"unknown data.fusion '{self.fusion}': use one of none, uia, mv, single:<voter>"
            )
        if not self.captions or not self.captions.strip():
            raise ConfigError(
                "data.captions is empty: use 'dataset' (the rows' caption_info) or a caption cache folder"
            )
        if self.na_captions not in ("vote", "drop"):
            raise ConfigError(
                f"data.na_captions must be 'vote' or 'drop', got '{self.na_captions}'"
            )
        if self.mv_rule not in ("plurality", "majority"):
            raise ConfigError(
                f"data.mv_rule must be 'plurality' or 'majority', got '{self.mv_rule}'"
            )
        if self.mv_tie not in ("yes", "no"):
            raise ConfigError(f"data.mv_tie must be 'yes' or 'no', got '{self.mv_tie}'")
        if fusion_kind == "mv" and not self.voters:
            raise ConfigError("data.voters is empty: majority vote needs at least one voter")
        if self.prompt_template not in ("mistral", "alpaca", "chat"):
            raise ConfigError(
                f"data.prompt_template must be 'mistral', 'alpaca' or 'chat', got '{self.prompt_template}'"
            )
        if self.image_size < 32:
            raise ConfigError(f"data.image_size must be at least 32, got {self.image_size}")
        if self.max_length < 16:
            raise ConfigError(f"data.max_length must be at least 16, got {self.max_length}")
        if self.pad_to_multiple_of < 1:
            raise ConfigError("data.pad_to_multiple_of must be at least 1")
        if self.max_rows_per_task is not None and self.max_rows_per_task < 1:
            raise ConfigError("data.max_rows_per_task must be positive or null")
        if not 0.0 <= self.min_caption_coverage <= 1.0:
            raise ConfigError(
                f"data.min_caption_coverage must be between 0 and 1, got {self.min_caption_coverage}"
            )
        self.tasks = normalise_tasks(self.tasks)
        for name in [self.train_split, *self.eval_splits, *self.split_map.values()]:
            if name not in SPLITS:
                raise ConfigError(
                    f"unknown split '{name}': canonical splits are {', '.join(SPLITS)}"
                )

    @property
    def fusion_kind(self) -> str:
        """``none``, ``uia``, ``mv`` or ``single``."""
        return self.fusion.partition(":")[0]

    @property
    def caption_cache(self) -> str | None:
        """The caption cache folder, or ``None`` when captions come from the rows' ``caption_info``
        (``data.captions: dataset``). The one place that reads ``data.captions``."""
        return None if self.captions == CAPTIONS_FROM_DATASET else self.captions

    @property
    def fusion_voters(self) -> list[str]:
        """The voters whose votes the fusion strategy reads."""
        kind, _, voter = self.fusion.partition(":")
        if kind == "mv":
            return list(self.voters)
        if kind == "single":
            return [voter]
        return []


def normalise_tasks(tasks: list[str] | str) -> list[str]:
    """Expand ``all`` and map names to codes, keeping the paper's task order."""
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        raise ConfigError("data.tasks is empty: give task codes or 'all'")
    if "all" in tasks:
        return list(TASK_CODES)
    try:
        codes = {get_task(t).code for t in tasks}
    except UnknownTaskError as err:
        raise ConfigError(f"data.tasks: {err}") from None
    return [c for c in TASK_CODES if c in codes]


@dataclass
class ModelConfig:
    """The model family and checkpoint, and its LoRA adapter."""

    kind: str = "lora"
    """``lora`` (LLM + LoRA) or ``fashionclip`` (the CLIP baseline)."""
    name_or_path: str = "mistralai/Mistral-7B-Instruct-v0.3"
    """Hub id, local folder, or an offline tiny model (``tiny:mistral``, ``tiny:llama``)."""
    tokenizer: str | None = None
    """Tokenizer id or path when it differs from the model's."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to pin."""
    dtype: str = "auto"
    """Weights dtype: ``auto`` (bf16 on GPUs that have it, fp16 on older GPUs, fp32 on CPU),
    ``bfloat16``, ``float16``, ``float32``."""
    attn_implementation: str | None = None
    """``eager``, ``sdpa``, ``flash_attention_2`` or ``null`` for the library default."""
    trust_remote_code: bool = False
    """Allow model code from the hub; off unless you trust the checkpoint."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    compile: bool = False
    """Compile each decoder layer with ``torch.compile`` (dynamic shapes, so varying batch lengths
    do not recompile); the first steps pay the compile time."""
    liger: bool = False
    """Liger's Triton kernels (RMSNorm, RoPE, SwiGLU and the fused linear cross-entropy, which never
    materialises the logits) on CUDA GPUs; needs ``pip install liger-kernel``."""
    lora_r: int = 16
    """LoRA rank (paper: 16)."""
    lora_alpha: int = 16
    """LoRA alpha (paper: 16)."""
    lora_dropout: float = 0.1
    """LoRA dropout (the paper does not say; eCeLLM's finetune.sh, which CASLIE's training follows,
    uses 0.10)."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
            "lm_head",
        ]
    )
    """Linear modules that get adapters (paper: all projections and the LM head)."""
    modules_to_save: list[str] = field(default_factory=list)
    """Modules trained in full beside the adapters and saved with them (PEFT's
    ``modules_to_save``; paper: none). The offline demo trains ``[embed_tokens, lm_head]`` of its
    randomly initialised tiny model, whose frozen random features an adapter alone barely moves."""

    def __post_init__(self) -> None:
        if self.kind not in ("lora", "fashionclip"):
            raise ConfigError(f"model.kind must be 'lora' or 'fashionclip', got '{self.kind}'")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"model.dtype '{self.dtype}' is not auto/bfloat16/float16/float32")
        if self.lora_r < 1 or self.lora_alpha < 1:
            raise ConfigError("model.lora_r and model.lora_alpha must be positive")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class OptimConfig:
    """Optimiser, schedule and batch sizes (paper: AdamW, 1e-4, cosine, 5% warm-up, batch 128)."""

    lr: float = 1e-4
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_ratio: float = 0.05
    """Share of optimiser steps spent warming up linearly."""
    scheduler: str = "cosine"
    """``cosine`` or ``constant`` after warm-up."""
    effective_batch_size: int = 128
    """Examples per optimiser step over all devices and accumulation."""
    micro_batch_size: int = 4
    """Examples per device per forward pass."""
    eval_batch_size: int = 16
    """Prompts per device per generation batch."""

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"optim.lr must be a positive finite number, got {self.lr}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError(
                f"optim.weight_decay must be finite and >= 0, got {self.weight_decay}"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.scheduler not in ("cosine", "constant"):
            raise ConfigError(f"optim.scheduler must be cosine or constant, got '{self.scheduler}'")
        for name in ("effective_batch_size", "micro_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"optim.{name} must be positive, got {getattr(self, name)}")


@dataclass
class DDPConfig:
    """``trainer.strategy: ddp``: one model copy per device, gradients all-reduced (the default for
    LoRA on 3B-13B models)."""

    find_unused_parameters: bool = False
    """Search the graph for parameters without a gradient at every step (slow; LoRA needs none)."""
    static_graph: bool = False
    """Declare the graph the same at every step (lets DDP overlap more with gradient checkpointing)."""
    gradient_as_bucket_view: bool = True
    """Gradients live in DDP's communication buckets (saves one copy of the trainable weights)."""


FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")


@dataclass
class FSDPConfig:
    """``trainer.strategy: fsdp``: weights sharded over the devices, one FSDP unit per decoder layer,
    so the frozen base and the LoRA weights of a layer are gathered together and the adapter is
    saved alone."""

    sharding_strategy: str = "FULL_SHARD"
    """``FULL_SHARD``, ``SHARD_GRAD_OP``, ``NO_SHARD`` or ``HYBRID_SHARD`` (FSDP's names)."""
    layer_classes: list[str] = field(default_factory=list)
    """Module class names wrapped as FSDP units (``[]``: the model's own decoder layers, from its
    ``_no_split_modules``)."""
    activation_checkpointing: bool = False
    """Recompute each wrapped layer's activations in the backward pass (FSDP's own checkpointing;
    leave ``model.gradient_checkpointing`` off then)."""
    cpu_offload: bool = False
    """Keep the sharded parameters in CPU memory between uses."""

    def __post_init__(self) -> None:
        if self.sharding_strategy not in FSDP_SHARDING:
            raise ConfigError(
                f"trainer.fsdp.sharding_strategy must be one of {', '.join(FSDP_SHARDING)}, "
                f"not '{self.sharding_strategy}'"
            )


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
"""``trainer.accelerator`` names Lightning accepts (checked here so a typo fails before any data
is built; the config module does not import Lightning, and a test keeps the lists in step)."""
PRECISIONS = ("auto", "transformer-engine", "transformer-engine-float16", "16-true", "16-mixed",
              "bf16-true", "bf16-mixed", "32-true", "64-true", "64", "32", "16", "bf16")  # fmt: skip
"""``trainer.precision`` values: ``auto`` and Lightning's precision names with their aliases."""


@dataclass
class TrainerConfig:
    """Arguments handed to the Lightning ``Trainer``."""

    accelerator: str = "auto"
    """``auto``, ``gpu``, ``cpu``..."""
    devices: str = "auto"
    """Devices per node, or ``auto``: the SLURM tasks per node inside ``srun``, else every visible GPU
    (one process on CPU)."""
    num_nodes: str = "auto"
    """Nodes, or ``auto``: the SLURM job's nodes inside ``srun``, else 1."""
    strategy: str = "auto"
    """``auto``, ``ddp`` (set by ``trainer.ddp``), ``fsdp`` (set by ``trainer.fsdp``), or another
    Lightning strategy name such as ``deepspeed_stage_2``."""
    ddp: DDPConfig = field(default_factory=DDPConfig)
    """Settings of ``trainer.strategy: ddp``."""
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    """Settings of ``trainer.strategy: fsdp``."""
    precision: str = "auto"
    """``auto`` (follows the weights dtype: bf16-mixed, 16-mixed or 32-true) or a Lightning precision."""
    max_epochs: int = 3
    """Epochs (paper: 3)."""
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run all epochs)."""
    gradient_clip_val: float | None = 1.0
    """Clip the gradient norm to this value (``null``: no clipping)."""
    log_every_n_steps: int = 10
    """Logging interval in optimiser steps."""
    val_check_interval: float | None = None
    """Validation interval (fraction of an epoch or batches); ``null``: once per epoch."""
    limit_train_batches: float | None = None
    """Use only part of the training set (debugging)."""
    limit_val_batches: float | None = None
    """Use only part of the validation set (debugging)."""
    ckpt_path: str | None = None
    """Resume from this checkpoint (``last``: the run's newest, or a fresh start if it has none)."""
    checkpoint_every_n_steps: int | None = None
    """Also save ``last.ckpt`` every N optimiser steps (``null``: by time and epoch only)."""
    checkpoint_every_minutes: float | None = 30.0
    """Save ``last.ckpt`` after this many minutes of training since the last save (``null``: off).
    ``last.ckpt`` is also saved after every validation, at every epoch end and on SIGTERM/SIGUSR1."""
    num_sanity_val_steps: int = 2
    """Validation batches run before training, to fail early (0: none)."""
    enable_progress_bar: bool = True
    """Show progress: a bar on a terminal, plain lines every ``log_every_n_steps`` steps in a log
    file (a SLURM ``.out``)."""

    def __post_init__(self) -> None:
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(
                f"unknown trainer.accelerator '{self.accelerator}': use one of {', '.join(ACCELERATORS)}"
            )
        if str(self.precision) not in PRECISIONS:
            raise ConfigError(
                f"unknown trainer.precision '{self.precision}': use one of {', '.join(PRECISIONS)}"
            )
        for key in ("devices", "num_nodes"):
            value = str(getattr(self, key))
            if value != AUTO and not (value.isdigit() and int(value) > 0):
                raise ConfigError(f"trainer.{key} must be a positive number or auto, not '{value}'")
        if self.checkpoint_every_minutes is not None and self.checkpoint_every_minutes <= 0:
            raise ConfigError("trainer.checkpoint_every_minutes must be positive (or null: off)")
        if self.max_epochs < 1 and self.max_steps < 1:
            raise ConfigError("set trainer.max_epochs or trainer.max_steps to a positive number")


@dataclass
class WandbConfig:
    """Weights & Biases logging."""

    mode: str = "offline"
    """``online``, ``offline`` or ``disabled``."""
    project: str = "caslie"
    """W&B project."""
    entity: str | None = None
    """W&B entity (team or user)."""
    group: str | None = None
    """Run group (sweeps and grids)."""
    tags: list[str] = field(default_factory=list)
    """Run tags."""
    log_predictions: int = 64
    """Rows per split logged to the predictions table."""

    def __post_init__(self) -> None:
        if self.mode not in ("online", "offline", "disabled"):
            raise ConfigError(
                f"logger.wandb.mode must be online/offline/disabled, got '{self.mode}'"
            )


PAPER_VOTER_MODELS = {
    "llama-3.2-3b-instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "llama-3.2-11b-vision-instruct": "meta-llama/Llama-3.2-11B-Vision-Instruct",
    "mistral-7b-instruct-v0.3": "mistralai/Mistral-7B-Instruct-v0.3",
    "phi-3.5-mini-instruct": "microsoft/Phi-3.5-mini-instruct",
}
"""The paper's five CQE voters: voter name -> checkpoint."""


@dataclass
class CaptionConfig:
    """EC3 captioning (``caslie caption``); captions go to the cache folder ``data.captions``."""

    model: str = "meta-llama/Llama-3.2-11B-Vision-Instruct"
    """Captioning VLM: hub id, local folder, or ``tiny:llava``."""
    prompts: str = "reference"
    """EC3 prompt set: ``reference`` (the published code's prompt per backend, byte for byte, and its
    caption clean-up: what the released captions were made with) or ``paper`` (Appendix C plus
    ``length_instruction``)."""
    context: bool = True
    """Context-conditioned prompts (Appendix C); ``false`` captions without context (BLIP-2 baseline)."""
    length_instruction: str = "Please keep the caption within 50 words."
    """Appended to each ``paper`` prompt (empty: nothing); the reference's lead sentence says it."""
    max_new_tokens: int = 128
    """Caption length budget in tokens."""
    batch_size: int = 8
    """Images per generation batch."""
    image_size: int = 500
    """Images are resized to fit in ``image_size`` x ``image_size`` (the paper's medium size)."""
    dtype: str = "auto"
    """Weights dtype (as ``model.dtype``)."""
    attn_implementation: str | None = None
    """Attention kernel, or ``null`` for the library default."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""
    fetch_timeout_s: float = 10.0
    """Total deadline per image URL attempt: connection, redirects and the whole body."""
    fetch_retries: int = 2
    """Retries after a failed URL fetch."""
    max_image_bytes: int = 20_000_000
    """Largest image download or file accepted."""
    max_image_pixels: int = 40_000_000
    """Largest image (width x height) decoded; larger ones are refused as decompression bombs."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1 or self.image_size < 32:
            raise ConfigError(
                "caption.batch_size and caption.max_new_tokens must be positive, caption.image_size >= 32"
            )
        if self.prompts not in ("reference", "paper"):
            raise ConfigError(
                f"caption.prompts must be 'reference' or 'paper', got '{self.prompts}'"
            )
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            raise ConfigError(f"caption.dtype '{self.dtype}' is not auto/bfloat16/float16/float32")


@dataclass
class CQEConfig:
    """CQE voting (``caslie vote``) by the voters in ``data.voters``; votes go to ``data.votes``."""

    models: dict[str, str] = field(default_factory=lambda: dict(PAPER_VOTER_MODELS))
    """Voter name -> checkpoint (hub id, local folder or ``tiny:<name>``)."""
    prompts: str = "reference"
    """CQE prompt set: ``reference`` (the published code's prompts byte for byte, with its system
    message for text voters: what the released votes were made with) or ``paper`` (Appendix C)."""
    mode: str = "score"
    """``score``: one forward pass, P(yes) against P(no); ``generate``: the reference way (generate
    ``max_new_tokens`` and read the start)."""
    max_new_tokens: int = 16
    """Generation budget in ``generate`` mode (the reference uses 16)."""
    batch_size: int = 16
    """Prompts per forward pass."""
    dtype: str = "auto"
    """Weights dtype (as ``model.dtype``)."""
    trust_remote_code: bool = False
    """Allow model code from the hub."""

    def __post_init__(self) -> None:
        if self.prompts not in ("reference", "paper"):
            raise ConfigError(f"cqe.prompts must be 'reference' or 'paper', got '{self.prompts}'")
        if self.mode not in ("score", "generate"):
            raise ConfigError(f"cqe.mode must be 'score' or 'generate', got '{self.mode}'")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("cqe.batch_size and cqe.max_new_tokens must be positive")


@dataclass
class LoggerConfig:
    """Loggers."""

    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases settings."""


@dataclass
class EvalConfig:
    """Generation-based evaluation."""

    parser: str = "paper"
    """Answer parser: ``paper`` (as the paper's scripts) or ``robust``."""
    max_new_tokens: int | None = None
    """Generated tokens per answer (``null``: sized to the task's longest label)."""
    constrained: bool = False
    """Restrict decoding to valid labels."""
    generate_on_val: bool = True
    """Generate answers on val at each validation and log their metrics."""
    preset: str = "fast"
    """``fast``: answers sized to the task's labels; ``reference``: the reference's inference.py
    (100 new tokens, EOS as the pad id; greedy and left-padded either way)."""
    select: str = "primary"
    """What picks ``best.ckpt`` on val: ``primary`` (the mean primary metric of the generated
    answers) or ``loss`` (the val loss, as eCeLLM's Trainer chose)."""

    def __post_init__(self) -> None:
        if self.preset not in ("fast", "reference"):
            raise ConfigError(f"eval.preset must be 'fast' or 'reference', got '{self.preset}'")
        if self.select not in ("primary", "loss"):
            raise ConfigError(f"eval.select must be 'primary' or 'loss', got '{self.select}'")
        if self.parser not in ("paper", "robust"):
            raise ConfigError(f"eval.parser must be 'paper' or 'robust', got '{self.parser}'")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ConfigError("eval.max_new_tokens must be positive or null")


@dataclass
class Config:
    """A whole run."""

    run: RunConfig = field(default_factory=RunConfig)
    """Run name, folder and seed."""
    data: DataConfig = field(default_factory=DataConfig)
    """Rows, captions, votes, fusion, prompts, tokenisation."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model and adapter."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and batch sizes."""
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    """Lightning Trainer arguments."""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """Loggers."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    """EC3 captioning (``caslie caption``)."""
    cqe: CQEConfig = field(default_factory=CQEConfig)
    """CQE voting (``caslie vote``)."""

    def __post_init__(self) -> None:
        if (
            self.eval.select == "primary"
            and self.model.kind == "lora"
            and not self.eval.generate_on_val
        ):
            raise ConfigError(
                "eval.select=primary picks the best checkpoint by generated answers on val, but "
                "eval.generate_on_val=false; set eval.select=loss or eval.generate_on_val=true"
            )
        world = self.world_size
        per_step = self.optim.micro_batch_size * world
        if self.optim.effective_batch_size % per_step:
            raise ConfigError(
                f"optim.effective_batch_size={self.optim.effective_batch_size} is not divisible by "
                f"optim.micro_batch_size={self.optim.micro_batch_size} x {world} device(s) = "
                f"{per_step}; change one of them so that gradient accumulation is a whole number"
            )

    @property
    def accumulate_grad_batches(self) -> int:
        """Micro-batches accumulated per optimiser step on each device."""
        return self.optim.effective_batch_size // (self.optim.micro_batch_size * self.world_size)

    @property
    def allocation(self) -> tuple[int, int]:
        """(devices per node, nodes) this process runs with (``auto`` resolved, see
        :mod:`caslie.cluster`)."""
        t = self.trainer
        return resolve_devices(t.accelerator, t.devices, t.num_nodes)

    @property
    def world_size(self) -> int:
        """Processes in the job: devices per node x nodes."""
        per_node, nodes = self.allocation
        return per_node * nodes


# --------------------------------------------------------------------------------------------------
# Loading


def read_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[tuple[Path, DictConfig]]:
    """A YAML file and, before it, the files its ``base:`` list names (relative to it), depth
    first: ``(file, its own keys)`` in the order they are merged."""
    if path in chain:
        raise ConfigError(f"config inheritance loops: {' -> '.join(map(str, chain + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as err:
        raise ConfigError(
            f"cannot parse config file {path}: {' '.join(str(err).split())}"
        ) from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    bases = node.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    layers: list[tuple[Path, DictConfig]] = []
    for base in bases:
        layers += read_layers((path.parent / str(base)).resolve(), chain + (path,))
    return layers + [(path, node)]


def read_yaml(path: Path) -> DictConfig:
    """A YAML file merged over the files its ``base:`` list names."""
    merged = OmegaConf.create({})
    for _, node in read_layers(path):
        merged = OmegaConf.merge(merged, node)
    return merged


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys of a config node's values (a list is one value)."""
    keys = []
    for key in node:
        dotted = f"{prefix}{key}"
        value = node._get_node(key)
        if isinstance(value, DictConfig) and not OmegaConf.is_interpolation(node, key):
            keys += leaf_keys(value, dotted + ".")
        else:
            keys.append(dotted)
    return keys


def _valid_keys(schema: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        key = f"{prefix}{f.name}"
        keys.append(key)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys.extend(_valid_keys(default, key + "."))
    return keys


KEY_ALIASES = {
    "learning_rate": "optim.lr", "lr_rate": "optim.lr", "batch_size": "optim.effective_batch_size",
    "train_batch_size": "optim.effective_batch_size", "per_device_batch_size": "optim.micro_batch_size",
    "gradient_accumulation_steps": "optim.effective_batch_size", "epochs": "trainer.max_epochs",
    "num_epochs": "trainer.max_epochs", "num_train_epochs": "trainer.max_epochs",
    "warmup": "optim.warmup_ratio", "lora_rank": "model.lora_r", "rank": "model.lora_r",
    "model_name": "model.name_or_path", "base_model": "model.name_or_path",
    "cutoff_len": "data.max_length", "max_seq_length": "data.max_length",
}  # fmt: skip
"""Names other fine-tuning stacks give a setting -> the key that holds it here."""


def _suggestion(key: str, valid: list[str]) -> str | None:
    """The valid key a mistyped or foreign ``key`` most likely means: an alias of its last part,
    a key with the same last part, a close last part within its section, else the closest key."""
    section, _, leaf = key.rpartition(".")
    norm = leaf.lower().replace("-", "_")
    if norm in KEY_ALIASES:
        return KEY_ALIASES[norm]
    same_leaf = [k for k in valid if k.rpartition(".")[2] == norm]
    if same_leaf:
        return min(same_leaf, key=lambda k: (not k.startswith(section + "."), len(k)))
    leaves = [k for k in valid if k.rpartition(".")[0] == section]
    match = difflib.get_close_matches(norm, [k.rpartition(".")[2] for k in leaves], n=1, cutoff=0.6)
    if match:
        return f"{section}.{match[0]}" if section else match[0]
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return close[0] if close else None


def _unknown_key_error(key: str, where: str) -> ConfigError:
    close = _suggestion(key, _valid_keys(Config))
    hint = f"; did you mean '{close}'?" if close else ""
    return ConfigError(f"unknown config key '{key}' in {where}{hint}")


def parse_overrides(args: list[str]) -> list[str]:
    """Turn ``a.b=c``, ``--a.b=c`` and ``--a.b c`` arguments into an OmegaConf dotlist.

    ``None`` (what ``str(None)`` gives a sweep agent) becomes YAML ``null``; lower-case ``none``
    stays a string (it is a fusion strategy).
    """
    out = []
    rest = iter(args)
    for arg in rest:
        item = arg[2:] if arg.startswith("--") else arg
        if "=" not in item and arg.startswith("--"):  # the space-separated form: --a.b c
            value = next(rest, None)
            if value is not None and not value.startswith("--"):
                item = f"{item}={value}"
        if "=" not in item:
            raise ConfigError(f"override '{arg}' is not of the form key=value (or --key=value)")
        key, value = item.split("=", 1)
        if value == "None":
            value = "null"
        out.append(f"{key}={value}")
    return out


_KEY = re.compile(r"[A-Za-z_][\w-]*(\.[\w/-]+)*")


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Take the config overrides out of a command line, wherever they stand.

    ``key=value``, ``--a.b=value`` and ``--a.b value`` are overrides (a command's own options have
    no dot in their names), so they may come before, between or after the options, and an option
    that takes several values (``--splits train val``) stops where the overrides start.

    Returns:
        ``(the other arguments, the overrides)``, each in its order, ``--a.b value`` joined into
        ``--a.b=value``.
    """
    options: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, _ = arg.removeprefix("--").partition("=")
        if arg.startswith("--") and "." in name and _KEY.fullmatch(name):
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                arg = f"{arg}={argv[i + 1]}"  # the space-separated form: --a.b value
                i += 1
            overrides.append(arg)
        elif not arg.startswith("-") and eq and _KEY.fullmatch(name):
            overrides.append(arg)
        else:
            options.append(arg)
        i += 1
    return options, overrides


def _wrap_scalars_for_lists(base: DictConfig, other: DictConfig) -> None:
    """Let a list field take a single value (``data.tasks=sa`` means ``[sa]``)."""
    for key in list(other.keys()):
        if key not in base:
            continue
        if OmegaConf.is_interpolation(other, key):
            continue  # resolved later, with the whole config (and may name an unset variable)
        target, value = base._get_node(key), other[key]
        if isinstance(target, ListConfig) and not isinstance(value, (list, ListConfig)):
            if value is not None:
                other[key] = [value]
        elif isinstance(target, DictConfig) and isinstance(value, DictConfig):
            _wrap_scalars_for_lists(target, value)


def _merge(base: DictConfig, other: DictConfig, where: str) -> DictConfig:
    _wrap_scalars_for_lists(base, other)
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as err:
        raise _unknown_key_error(str(err.full_key), where) from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", "") or "?"
        msg = str(err).splitlines()[0]
        raise ConfigError(f"bad value for config key '{key}' in {where}: {msg}") from None


def load_config(path: str | Path | Sequence[str | Path] | None = None,
                overrides: list[str] | None = None) -> Config:  # fmt: skip
    """Build and validate a run config.

    Args:
        path: YAML file (its ``base:`` files are merged first), several merged in order (a run
            config, then fragments such as ``configs/strategy/fsdp.yaml``), or ``None`` for the
            defaults.
        overrides: ``key=value`` or ``--key=value`` strings applied last.

    Returns:
        The validated :class:`Config`.

    Relative paths come back absolute, by the rule of :mod:`caslie.config_paths`.

    Raises:
        ConfigError: unknown keys (with the closest valid key), bad types or values.
    """
    cfg = OmegaConf.structured(Config)
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    sources: dict[str, str] = {}  # dotted key -> the file (or OVERRIDE) that set it last
    for one in paths:
        for layer, node in read_layers(Path(one).resolve()):
            cfg = _merge(cfg, node, str(layer))
            sources |= dict.fromkeys(leaf_keys(node), str(layer))
    if overrides:
        dotlist = parse_overrides(overrides)
        try:
            other = OmegaConf.from_dotlist(dotlist)
        except (OmegaConfBaseException, yaml.YAMLError) as err:  # e.g. an unclosed list
            raise ConfigError(
                f"cannot parse overrides {dotlist}: {' '.join(str(err).split())}"
            ) from None
        cfg = _merge(cfg, other, "command-line overrides")
        sources |= dict.fromkeys(leaf_keys(other), OVERRIDE)
    obj = to_object(cfg)
    resolve_paths(obj, sources)
    obj._env_interpolations = env_interpolations(cfg)  # what to_yaml and to_dict write back
    obj._sources = sources  # what --print-config shows beside each value
    obj.data.loaded_from = [str(p) for p in paths]  # advice repeats them (caslie.data.advice)
    return obj


def to_object(cfg: DictConfig) -> Config:
    """Instantiate the dataclasses (running every ``__post_init__`` check)."""
    try:
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ConfigError) else None
        if cause is not None:
            raise cause from None
        key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0]
        raise ConfigError(f"config key '{key}': {first}" if key else first) from None
    assert isinstance(obj, Config)
    return obj


def to_yaml(cfg: Config) -> str:
    """The config as YAML to save: resolved, except that environment reads stay unresolved and
    secret-looking environment values never appear (see :mod:`caslie.redact`)."""
    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


def to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain containers for loggers, with secrets kept out as in :func:`to_yaml`."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg))
    assert isinstance(container, dict)
    return keep_secrets_out(container, getattr(cfg, "_env_interpolations", {}))  # type: ignore[arg-type]


RESTART_KEYS = frozenset({"trainer.ckpt_path", "trainer.enable_progress_bar", "data.num_workers",
                          "run.overwrite", "data.allow_changed"})  # fmt: skip
"""Keys a restarted run may change without becoming another experiment."""


def changed_keys(old_yaml: str, new_yaml: str) -> list[str]:
    """Keys whose values differ between two saved configs, except :data:`RESTART_KEYS`."""
    # A key the saved config predates reads as its default (a newer version added it).
    # Saved configs keep ${oc.env:...} unresolved: they are compared as written.
    defaults = OmegaConf.create(to_yaml(Config()))
    old, new = (OmegaConf.to_container(OmegaConf.merge(defaults, OmegaConf.create(text)))
                for text in (old_yaml, new_yaml))  # fmt: skip
    return [k for k in _diff_keys(old, new) if k not in RESTART_KEYS]


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            sub = f"{prefix}{key}"
            if key not in a or key not in b:
                out.append(sub)
            else:
                out.extend(_diff_keys(a[key], b[key], sub + "."))
        return out
    return [] if a == b else [prefix.rstrip(".")]

"""LoRAInstructModule: a causal LM with a peft LoRA adapter, trained on answers, scored by generation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from caslie.config import Config, ModelConfig
from caslie.data.tokenize import IGNORE_INDEX
from caslie.errors import CheckpointError, ConfigError, NonFiniteLossError
from caslie.generation import LabelTrie, answer_budget, generate_answers, label_ids
from caslie.models.answer_layer import answer_only_last_layer
from caslie.models.base import CaslieModule, count_parameters
from caslie.models.dropout import use_word_dropout
from caslie.models.segments import NAME as SEGMENTS
from caslie.models.segments import use_segment_attention
from caslie.pretrained import Checkpoint, load_model

log = logging.getLogger(__name__)

REFERENCE_NEW_TOKENS = 100
"""New tokens per answer in the reference's ``inference.py`` (``eval.preset=reference``)."""


def linear_names(model: torch.nn.Module) -> list[str]:
    """Short names of the model's linear layers (what LoRA target lists refer to)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear)
        }
    )


def module_names(model: torch.nn.Module) -> set[str]:
    """Short names of all the model's modules (what ``modules_to_save`` refers to)."""
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def _fit_vocab(model: Any, tokenizer: Any) -> None:
    """Grow the embeddings for tokens the tokenizer added (the pad token), deterministically.

    New input rows get the mean of the old rows and new output rows zeros, so the same base model
    and tokenizer always give the same weights and an adapter-only checkpoint reloads exactly.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= old:
        return
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[old:] = emb[:old].mean(dim=0, keepdim=True)
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[old:] = 0.0
    log.info("resized embeddings %d -> %d for the added pad token", old, len(tokenizer))


def load_base_model(
    model_cfg: ModelConfig, tokenizer: Any, dtype: torch.dtype | None = None
) -> Any:
    """Load the causal LM a model config names, sized to ``tokenizer``, pad token set."""
    from transformers import AutoModelForCausalLM

    ckpt = Checkpoint.from_config(model_cfg)
    try:
        model = load_model(ckpt, AutoModelForCausalLM, dtype)
    except ValueError as err:
        if "Unrecognized configuration class" not in str(err):
            raise
        raise ConfigError(
            f"model.name_or_path '{model_cfg.name_or_path}' is not a causal language model "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160]})"
        ) from None
    _fit_vocab(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def apply_liger(model: Any) -> None:
    """Patch ``model`` (before the adapter is attached) with Liger's kernels.

    Raises:
        ConfigError: no CUDA GPU, or the ``liger-kernel`` package is missing.
    """
    if not torch.cuda.is_available():
        raise ConfigError("model.liger needs a CUDA GPU (Liger's kernels are Triton); set "
                          "model.liger=false here")  # fmt: skip
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise ConfigError(
            "model.liger needs the liger-kernel package: pip install liger-kernel"
        ) from None
    _apply_liger_kernel_to_instance(model=model)


def compile_layers(model: Any) -> int:
    """Compile every decoder layer of ``model`` in place (``torch.compile``, dynamic shapes).

    Layers rather than the whole model: the layers are identical, so one compiled graph serves
    them all, and the parts around them (embeddings, the adapter wrapper, generation) stay eager.
    State-dict names do not change. Returns the number of layers compiled.
    """
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


def build_lora_model(
    model_cfg: ModelConfig, tokenizer: Any, dtype: torch.dtype | None = None
) -> Any:
    """The base model with a fresh LoRA adapter (the paper's defaults come from the config).

    Raises:
        ConfigError: a LoRA target that is not a linear layer of the model (the message lists the
            available ones).
    """
    from peft import LoraConfig, get_peft_model

    model = load_base_model(model_cfg, tokenizer, dtype)
    if model_cfg.liger:
        apply_liger(model)
    available = linear_names(model)
    missing = [t for t in model_cfg.lora_target_modules if t not in available]
    if missing:
        raise ConfigError(
            f"model.lora_target_modules {missing} are not linear layers of {model_cfg.name_or_path}; "
            f"available: {', '.join(available)}"
        )
    unknown = [m for m in model_cfg.modules_to_save if m not in module_names(model)]
    if unknown:
        raise ConfigError(
            f"model.modules_to_save {unknown} name no module of {model_cfg.name_or_path}"
        )
    clash = set(model_cfg.modules_to_save) & set(model_cfg.lora_target_modules)
    if clash:
        raise ConfigError(
            f"{sorted(clash)} are in both model.lora_target_modules and model.modules_to_save: "
            "a module gets an adapter or is trained in full, not both"
        )
    if model_cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
        # A frozen base gives the checkpointed blocks no input that needs grad; without this the
        # adapters inside them would get no gradient.
        model.enable_input_require_grads()
        model.config.use_cache = False
    lora = LoraConfig(
        r=model_cfg.lora_r,
        lora_alpha=model_cfg.lora_alpha,
        lora_dropout=model_cfg.lora_dropout,
        target_modules=list(model_cfg.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=list(model_cfg.modules_to_save) or None,
    )
    peft_model = get_peft_model(model, lora)
    use_word_dropout(peft_model)  # torch's dropout distribution, a cheaper mask on a CPU
    return peft_model


class LoRAInstructModule(CaslieModule):
    """Instruction tuning with LoRA on answer tokens; evaluation by batched greedy generation.

    The model is built in ``configure_model`` (so strategies can shard it). Checkpoints hold only the
    adapter weights plus optimiser, scheduler, loop and RNG state. Validation computes the teacher-
    forced loss (loader 0) and, with ``eval.generate_on_val``, generates answers (loader 1); testing
    generates on every evaluation split. The label tries and answer budgets come from the
    datamodule's labels (:meth:`bind`).

    Args:
        cfg: The run config.
        tokenizer: The tokenizer (pad token distinct from EOS).
        run_dir: Where non-finite-loss checkpoints go.
        adapter: Attach a LoRA adapter (off: evaluate the model as it is, e.g. a released merged
            checkpoint).
    """

    def __init__(self, cfg: Config, tokenizer: Any, run_dir: Path | None = None,
                 adapter: bool = True):  # fmt: skip
        super().__init__(cfg, run_dir)
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise ValueError(
                "the tokenizer needs a pad token distinct from EOS (caslie.pretrained.load_tokenizer)"
            )
        self.tokenizer = tokenizer
        self.adapter = adapter
        self.model: Any = None
        self.strict_loading = False  # checkpoints hold the adapter only
        self._tries: dict[str, LabelTrie] = {}
        self._budget: dict[str, int] = {}
        self._window: torch.Tensor | None = None  # summed training loss since the last log
        self._window_batches = self._window_start = 0
        self._answer_layer = False  # the last layer runs at answer positions (answer_layer.py)

    def bind(self, datamodule: Any) -> None:
        """Label tries (constrained decoding) and answer budgets from the datamodule's labels."""
        self.bind_labels(datamodule.labels)

    def bind_labels(self, labels: dict[str, Any]) -> None:
        """Build the generation tables from ``{task: labels the model may answer}``."""
        tok = self.tokenizer
        self._tries = {
            task: LabelTrie(label_ids(tok, labs), tok.eos_token_id) for task, labs in labels.items()
        }
        self._budget = {task: answer_budget(tok, labs) for task, labs in labels.items()}
        self._bound = True

    # ---------------------------------------------------------------------------------------- model

    def configure_model(self) -> None:
        """Load the base model and attach the adapter (once)."""
        if self.model is None and not self.adapter:
            self.model = load_base_model(self.cfg.model, self.tokenizer).eval()
            self.model.requires_grad_(False)
        if self.model is None:
            self.model = build_lora_model(self.cfg.model, self.tokenizer)
            self.model.train()  # from_pretrained returns eval mode; the loop expects train mode
            # Compiled layers would recompile for every new set of example lengths (a Python
            # list), so they keep transformers' block-diagonal mask instead.
            base = self.model.get_base_model()
            segments = self.cfg.data.packing and not self.cfg.model.compile
            if segments and use_segment_attention(base):
                log.info("packed rows: attention runs per example (caslie_segments)")
            if self.cfg.model.compile:
                log.info("compiled %d decoder layers", compile_layers(base))
            # Compiled layers would recompile for every number of answer positions; Liger's loss
            # reads the whole sequence.
            lean = not (self.cfg.model.compile or self.cfg.model.liger)
            if lean and answer_only_last_layer(base, self.cfg.data.max_length):
                self._answer_layer = True
                log.info("the last decoder layer runs at the answer positions only")
            n_train, n_all = count_parameters(self.model)
            log.info(
                "LoRA: %d trainable of %d parameters (%.3f%%)",
                n_train,
                n_all,
                100 * n_train / n_all,
            )

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the adapter weights."""
        return {f"model.{_plain_name(n)}" for n, p in self.model.named_parameters()
                if p.requires_grad}  # fmt: skip

    def keep_in_checkpoint(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        keep = self.trainable_keys()
        return {k: v for k, v in state_dict.items() if k in keep}

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"base_model": self.cfg.model.name_or_path, "vocab": len(self.tokenizer)}

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self.trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise CheckpointError(
                f"the checkpoint lacks {len(missing)} adapter weights of this model (e.g. "
                f"{sorted(missing)[0]}); it was saved for another model or LoRA config"
            )

    # ------------------------------------------------------------------------------------- training

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the batch's answer tokens (the causal-LM loss of transformers).

        With ``logit_positions`` (the collators give them) logits are computed only where the next
        token is an answer token: the other positions add nothing to the loss or its gradient, and
        the LM head over every position is most of a small model's work. With ``model.liger`` the
        model's fused linear cross-entropy computes the loss without materialising logits.
        """
        names = ("input_ids", "attention_mask", "position_ids")
        inputs = {k: batch[k] for k in names if k in batch}
        # A packed row (position ids, no mask) tells segment attention where its examples start;
        # flash-attention finds them itself from the position ids.
        packed = "position_ids" in batch and "attention_mask" not in batch
        if packed and self.model.config._attn_implementation == SEGMENTS:
            inputs["caslie_segments"] = batch["seq_lens"]
        keep = batch.get("logit_positions")
        if keep is None or self.cfg.model.liger:
            return self.model(**inputs, labels=batch["labels"], use_cache=False).loss
        if self._answer_layer:  # the last layer's output holds the kept positions alone
            logits = self.model(
                **inputs, caslie_keep=keep, logits_to_keep=0, use_cache=False
            ).logits
        else:
            logits = self.model(**inputs, logits_to_keep=keep, use_cache=False).logits
        targets = batch["labels"][:, keep + 1]
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               ignore_index=IGNORE_INDEX)  # fmt: skip

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self(batch)
        # Summed on the device; read (one sync) only when the window is logged.
        detached = loss.detach()
        self._window = detached if self._window is None else self._window + detached
        self._window_batches += 1
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """At the optimiser steps Lightning sends to the loggers (every
        ``trainer.log_every_n_steps``): stop on a non-finite loss in the window, log the window's
        mean loss, the learning rate and the gradient norm. The only host-device sync of training."""
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps:
            return
        mean = self._close_window()
        if mean is None:
            return
        self.log("train/loss", mean, prog_bar=True, batch_size=1)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=1)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if grads:
            self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads), batch_size=1)

    def on_train_epoch_end(self) -> None:
        self._close_window()  # the steps after the epoch's last log are checked too

    def _close_window(self) -> torch.Tensor | None:
        """The mean training loss since the last log (``None``: no batch), after checking that it
        is finite on every rank."""
        if self._window is None:
            return None
        mean = self._window / self._window_batches
        first_step = self._window_start
        self._window, self._window_batches = None, 0
        self._window_start = self.trainer.global_step + 1
        bad = not torch.isfinite(mean).item()
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop_on_non_finite(mean, first_step)
        return mean

    def _stop_on_non_finite(self, loss: torch.Tensor, first_step: int) -> None:
        step = self.trainer.global_step
        saved = "no run folder to save into"
        if self.run_dir is not None:
            path = self.run_dir / "checkpoints" / f"nonfinite-step{step}.ckpt"
            self.trainer.save_checkpoint(path)
            saved = f"state saved to {path}"
        steps = f"step {step}" if first_step >= step else f"steps {first_step}-{step}"
        raise NonFiniteLossError(
            f"the training loss is {loss.item()} in {steps} ({saved}; trainer.log_every_n_steps=1 "
            "stops at the first such step). Lower optim.lr, keep trainer.gradient_clip_val set, or "
            "try trainer.precision=32-true / model.dtype=float32; check the batch's rows with "
            "`caslie inspect`"
        )

    # ----------------------------------------------------------------------------------- evaluation

    def scores_val(self) -> bool:
        return self.cfg.eval.generate_on_val

    def _generate(self, batch: dict[str, Any]) -> list[str]:
        ev = self.cfg.eval
        if ev.preset == "reference":  # inference.py: 100 new tokens, EOS pads
            budget, pad_id = ev.max_new_tokens or REFERENCE_NEW_TOKENS, self.tokenizer.eos_token_id
        else:
            budget = ev.max_new_tokens or max(self._budget.get(t, 8) for t in batch["task"])
            pad_id = self.tokenizer.pad_token_id
        tries = [self._tries[t] for t in batch["task"]] if ev.constrained else None
        return generate_answers(self.model, self.tokenizer, batch["input_ids"],
                                batch["attention_mask"], budget, tries, pad_id=pad_id)  # fmt: skip

    def _collect(self, batch: dict[str, Any]) -> None:
        generated = self._generate(batch)
        self.add_rows(
            [
                meta | {"generated": text}
                for meta, text in zip(batch["meta"], generated, strict=True)
            ]
        )

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx == 0:
            loss = self(batch)
            # Weighted by examples, as HF Trainer's eval_loss is (a packed row holds several).
            examples = len(batch["seq_lens"]) if "seq_lens" in batch else batch["input_ids"].size(0)
            self.log("val/loss", loss, prog_bar=True, sync_dist=True, add_dataloader_idx=False,
                     batch_size=examples)  # fmt: skip
        else:
            self._collect(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch)


_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")
"""Name parts FSDP and activation checkpointing insert; state dicts are saved without them."""


def _plain_name(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name

"""LoRAInstructModule: a causal LM with a peft LoRA adapter, trained on answers, scored by generation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from caslie.config import Config, ConfigError, ModelConfig
from caslie.errors import NonFiniteLossError
from caslie.evaluation import finish_eval
from caslie.generation import LabelTrie, answer_budget, generate_answers, label_ids
from caslie.optim import adamw_with_schedule
from caslie.resume import ExactResume

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def resolve_dtype(name: str) -> torch.dtype:
    """The weights dtype for ``model.dtype``: ``auto`` is bf16 on GPUs that have it, else fp16 on
    older GPUs (with a warning) and fp32 on CPU."""
    if name != "auto":
        return DTYPES[name]
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        log.warning(
            "this GPU has no bf16: loading weights in float16 (set model.dtype to override)"
        )
        return torch.float16
    return torch.float32


def precision_for(dtype: torch.dtype) -> str:
    """The Lightning precision that matches the weights dtype (``trainer.precision: auto``)."""
    return {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed"}.get(dtype, "32-true")


def linear_names(model: torch.nn.Module) -> list[str]:
    """Short names of the model's linear layers (what LoRA target lists refer to)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, mod in model.named_modules()
            if isinstance(mod, torch.nn.Linear)
        }
    )


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

    from caslie.offline import resolve_pretrained

    kwargs: dict[str, Any] = {
        "dtype": dtype or resolve_dtype(model_cfg.dtype),
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
    }
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    model = AutoModelForCausalLM.from_pretrained(
        resolve_pretrained(model_cfg.name_or_path), **kwargs
    )
    _fit_vocab(model, tokenizer)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


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
    available = linear_names(model)
    missing = [t for t in model_cfg.lora_target_modules if t not in available]
    if missing:
        raise ConfigError(
            f"model.lora_target_modules {missing} are not linear layers of {model_cfg.name_or_path}; "
            f"available: {', '.join(available)}"
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
    )
    return get_peft_model(model, lora)


class LoRAInstructModule(ExactResume, L.LightningModule):
    """Instruction tuning with LoRA on answer tokens; evaluation by batched greedy generation.

    The model is built in ``configure_model`` (so strategies can shard it). Checkpoints hold only the
    adapter weights plus optimiser, scheduler, loop and RNG state. Validation computes the teacher-
    forced loss (loader 0) and, with ``eval.generate_on_val``, generates answers (loader 1); testing
    generates on every evaluation split. After each evaluation epoch, ``self.eval_results`` holds
    ``{"metrics": {split: {task: ...}}, "rows": [...]}`` (every row once, on every rank).

    Args:
        cfg: The run config.
        tokenizer: The tokenizer (pad token distinct from EOS).
        labels: ``{task: labels}`` the model may answer (sizes generation, builds constraints).
        run_dir: Where non-finite-loss checkpoints go.
    """

    def __init__(
        self, cfg: Config, tokenizer: Any, labels: dict[str, set[str]], run_dir: Path | None = None
    ):
        super().__init__()
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise ValueError(
                "the tokenizer needs a pad token distinct from EOS (caslie.offline.load_tokenizer)"
            )
        self.cfg, self.tokenizer, self.run_dir = cfg, tokenizer, run_dir
        self.model: Any = None
        self.strict_loading = False  # checkpoints hold the adapter only
        self.eval_results: dict[str, Any] = {}
        self.wandb_run_id: str | None = None
        self._rows: list[dict] = []
        self._tries = {
            task: LabelTrie(label_ids(tokenizer, labs), tokenizer.eos_token_id)
            for task, labs in labels.items()
        }
        self._budget = {task: answer_budget(tokenizer, labs) for task, labs in labels.items()}

    # ---------------------------------------------------------------------------------------- model

    def configure_model(self) -> None:
        """Load the base model and attach the adapter (once)."""
        if self.model is None:
            self.model = build_lora_model(self.cfg.model, self.tokenizer)
            self.model.train()  # from_pretrained returns eval mode; the loop expects train mode
            n_train = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in self.model.parameters())
            log.info(
                "LoRA: %d trainable of %d parameters (%.3f%%)",
                n_train,
                n_all,
                100 * n_train / n_all,
            )

    def trainable_keys(self) -> set[str]:
        """State-dict keys of the adapter weights."""
        return {f"model.{n}" for n, p in self.model.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint["caslie"] = self.resume_state() | {
            "base_model": self.cfg.model.name_or_path,
            "vocab": len(self.tokenizer),
            "wandb_run_id": self.wandb_run_id,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = self.trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(
                f"the checkpoint lacks {len(missing)} adapter weights of this model (e.g. "
                f"{sorted(missing)[0]}); it was saved for another model or LoRA config"
            )
        meta = checkpoint.get("caslie", {})
        self.wandb_run_id = meta.get("wandb_run_id")
        self.restore_resume_state(meta)

    # ------------------------------------------------------------------------------------- training

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        bad = not torch.isfinite(loss).item()
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop_on_non_finite(loss)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0])
        return loss

    def _stop_on_non_finite(self, loss: torch.Tensor) -> None:
        step = self.trainer.global_step
        saved = "no run folder to save into"
        if self.run_dir is not None:
            path = self.run_dir / "checkpoints" / f"nonfinite-step{step}.ckpt"
            self.trainer.save_checkpoint(path)
            saved = f"state saved to {path}"
        raise NonFiniteLossError(
            f"the training loss is {loss.item()} at step {step} ({saved}). Lower optim.lr, keep "
            "trainer.gradient_clip_val set, or try trainer.precision=32-true / model.dtype=float32; "
            "check the batch's rows with `caslie inspect`"
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.trainer.global_step % self.trainer.log_every_n_steps:
            return
        norms = [
            p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None
        ]
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm())

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        return adamw_with_schedule(
            params, self.cfg.optim, int(self.trainer.estimated_stepping_batches)
        )

    # ----------------------------------------------------------------------------------- evaluation

    def _generate(self, batch: dict[str, Any]) -> list[str]:
        budget = self.cfg.eval.max_new_tokens or max(self._budget.get(t, 8) for t in batch["task"])
        tries = [self._tries[t] for t in batch["task"]] if self.cfg.eval.constrained else None
        return generate_answers(
            self.model, self.tokenizer, batch["input_ids"], batch["attention_mask"], budget, tries
        )

    def _collect(self, batch: dict[str, Any]) -> None:
        for meta, text in zip(batch["meta"], self._generate(batch), strict=True):
            self._rows.append(meta | {"generated": text})

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx == 0:
            loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
            self.log("val/loss", loss, prog_bar=True, sync_dist=True, add_dataloader_idx=False)
        else:
            self._collect(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self.cfg.eval.generate_on_val:
            self._rows = []
            return
        self._finish_eval()

    def on_test_epoch_end(self) -> None:
        self._finish_eval()

    def _finish_eval(self) -> None:
        finish_eval(self, self._rows, self.cfg.eval.parser)
        self._rows = []

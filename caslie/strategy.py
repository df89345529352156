"""The Lightning strategy ``trainer.strategy`` names, built from its typed settings.

``ddp`` and ``fsdp`` are built here from ``trainer.ddp`` and ``trainer.fsdp``; any other name
(``auto``, ``deepspeed_stage_2``...) goes to Lightning as it is. FSDP wraps one unit per repeated
layer (a decoder layer) and, inside it, one per LoRA matrix, with ``use_orig_params``; checkpoints
are gathered in full and keep the adapter only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    StateDictType,
)
from torch.distributed.fsdp.wrap import CustomPolicy

from caslie.checkpoints import read_checkpoint
from caslie.config import TrainerConfig


def build_strategy(trainer: TrainerConfig, layers: Callable[[list[str]], set[type]]) -> Any:
    """A Lightning strategy object (``ddp``, ``fsdp``) or the name Lightning resolves itself.

    Args:
        trainer: The ``trainer`` section.
        layers: Given ``trainer.fsdp.layer_classes``, the module classes FSDP wraps one by one
            (called for ``fsdp`` only, so no model config is read otherwise).
    """
    if trainer.strategy == "ddp":
        d = trainer.ddp
        return DDPStrategy(find_unused_parameters=d.find_unused_parameters,
                           static_graph=d.static_graph,
                           gradient_as_bucket_view=d.gradient_as_bucket_view)  # fmt: skip
    if trainer.strategy == "fsdp":
        f = trainer.fsdp
        wrapped = layers(list(f.layer_classes))
        return ShardedLoRAStrategy(
            auto_wrap_policy=_units(wrapped), sharding_strategy=f.sharding_strategy,
            activation_checkpointing_policy=wrapped if f.activation_checkpointing else None,
            cpu_offload=f.cpu_offload, state_dict_type="full", use_orig_params=True,
        )  # fmt: skip
    return trainer.strategy


def _units(layers: set[type]) -> CustomPolicy:
    """FSDP's wrap policy: each repeated layer is a unit, and inside it each module whose own
    weights are all trainable (a LoRA ``lora_A``/``lora_B``) is a unit of its own, so no unit
    mixes frozen and trainable weights (FSDP would keep gradient memory for the frozen ones)."""

    def wrap(module: Any) -> bool:
        if isinstance(module, tuple(layers)):
            return True
        own = list(module.parameters(recurse=False))
        return bool(own) and all(p.requires_grad for p in own)

    return CustomPolicy(wrap)


class ShardedLoRAStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy``, able to run on CPU processes too, and safe to reload.

    Lightning refuses FSDP off CUDA (it checks for exactly its own class) and hands FSDP no device
    on CPU, which FSDP then refuses; torch's FSDP itself runs on CPU over gloo once it is told the
    device. That is how the project's 2-process CPU tests run this strategy. On GPUs only the
    checkpoint loading and the second-stage root below differ from Lightning's.
    """

    strategy_name = "fsdp"
    _root: Any = None

    def _setup_model(self, model: Any) -> Any:
        # A second stage (test after fit) hands over the bare LightningModule again, its layers
        # still wrapped; its top-level weights live in the first stage's root unit only, so that
        # root is used again rather than a new one built over emptied weights.
        if self._root is not None and self._root.module is model:
            return self._root
        wrapped = any(isinstance(m, FullyShardedDataParallel) for m in model.modules())
        if self.root_device.type == "cpu" and not wrapped:
            model = FullyShardedDataParallel(
                module=model, cpu_offload=self.cpu_offload,
                mixed_precision=self.mixed_precision_config,
                sharding_strategy=self.sharding_strategy, device_id=self.root_device,
                **self.kwargs,
            )  # fmt: skip
            self.kwargs.pop("auto_wrap_policy", None)  # applied: Lightning must not again
        self._root = super()._setup_model(model)
        return self._root

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        # Lightning reads an FSDP checkpoint with its own unpickler, which runs whatever the file
        # holds: it must first pass the weights-only reader. Lightning also loads the weights
        # itself and drops them from what it returns; they are handed back (memory-mapped), so
        # the module checks them as under any other strategy.
        safe = read_checkpoint(Path(checkpoint_path))
        checkpoint = super().load_checkpoint(checkpoint_path, weights_only)
        checkpoint.setdefault("state_dict", safe["state_dict"])
        return checkpoint

    def _full_context(self) -> Any:
        # Lightning gathers with offload_to_cpu, which copies off a GPU but on a CPU device returns
        # views of the gathered weights that FSDP frees right after (a crash at save).
        return FullyShardedDataParallel.state_dict_type(
            self.model, StateDictType.FULL_STATE_DICT,
            FullStateDictConfig(offload_to_cpu=False, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=True),
        )  # fmt: skip

    def lightning_module_state_dict(self) -> dict[str, Any]:
        if self.root_device.type != "cpu":
            return super().lightning_module_state_dict()
        with self._full_context():
            return self.model.state_dict()

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        if self.root_device.type != "cpu":
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer
        with self._full_context():
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # keyed by parameter id, as a plain optimiser saves
                state = FullyShardedDataParallel.rekey_optim_state_dict(
                    state, OptimStateKeyType.PARAM_ID, self.model
                )
            return state

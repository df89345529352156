"""GPU-only paths (skipped without a CUDA device; benchmarks/gpu_check.sh runs them): bf16 packing,
fused AdamW, Liger's fused loss, compiled layers, MFU against a known peak."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from caslie.config import Config, ModelConfig, OptimConfig
from caslie.data.packing import collate_training
from caslie.mfu import peak_flops
from caslie.models.lora import LoRAInstructModule
from caslie.optim import adamw_with_schedule
from caslie.pretrained import tokenizer_for

pytestmark = pytest.mark.gpu

TEXTS = [("Is this a shoe? ", "yes"), ("Rate the review from 1 to 5: great ", "5"),
         ("Which option fits the query about red dresses? ", "B")]  # fmt: skip


def _module(**model: object) -> tuple[LoRAInstructModule, list[dict], int]:
    cfg = Config(model=dataclasses.replace(ModelConfig(), name_or_path="tiny:mistral",
                                           lora_dropout=0.0, **model))  # fmt: skip
    tok = tokenizer_for(cfg.model)
    module = LoRAInstructModule(cfg, tok)
    module.configure_model()
    module.model.to("cuda")
    feats = [{"input_ids": tok(p + a)["input_ids"] + [tok.eos_token_id],
              "prompt_len": len(tok(p)["input_ids"])} for p, a in TEXTS]  # fmt: skip
    return module, feats, tok.pad_token_id


def _on_cuda(batch: dict) -> dict:
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def test_packed_loss_equals_padded_loss_in_bf16():
    module, feats, pad = _module()
    module.model.to(torch.bfloat16)
    padded = module(_on_cuda(collate_training(feats, pad_id=pad)))
    packed = module(_on_cuda(collate_training(feats, pad_id=pad, packed=True)))
    assert torch.allclose(padded.float(), packed.float(), rtol=2e-2)  # bf16: about 3 digits


def test_adamw_is_fused_on_cuda():
    param = torch.nn.Parameter(torch.zeros(4, device="cuda"))
    opt = adamw_with_schedule([param], OptimConfig(), total_steps=10)["optimizer"]
    assert opt.defaults["fused"] is True


def test_peak_flops_is_known_for_this_gpu():
    assert peak_flops(torch.device("cuda"), torch.bfloat16) is not None


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="no liger-kernel")
def test_liger_fused_loss_equals_the_standard_loss():
    plain, feats, pad = _module()
    liger, _, _ = _module(liger=True)
    liger.model.load_state_dict(plain.model.state_dict())
    batch = _on_cuda(collate_training(feats, pad_id=pad))
    assert torch.allclose(plain(batch), liger(batch), rtol=1e-4)


def test_compiled_layers_give_the_eager_loss():
    eager, feats, pad = _module()
    compiled, _, _ = _module(compile=True)
    compiled.model.load_state_dict(eager.model.state_dict())
    batch = _on_cuda(collate_training(feats, pad_id=pad, packed=True))
    assert torch.allclose(eager(batch), compiled(batch), rtol=1e-4)

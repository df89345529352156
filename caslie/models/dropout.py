"""LoRA dropout whose mask costs half of torch's on a CPU.

peft drops out the input of every adapter (``lora_dropout``, 0.1 in eCeLLM's setup), so each LoRA
layer of a step draws one Bernoulli number per input element. On a CPU ``torch.dropout`` draws each
one from a double-precision uniform of the Mersenne twister: for a small model that is a sixth of
the training step, more than the adapters' own products. :class:`WordDropout` takes two 32-bit
uniform integers from every 64-bit word the generator gives and keeps an element where its
integer clears ``p`` of the range: the same Bernoulli(1 - p) mask scaled by ``1 / (1 - p)``, with
``p`` resolved to 2^-32, from half the generator calls. It draws from torch's generator, so
``seed_everything`` makes it reproducible as before. On other devices (CUDA's dropout is a fused
Philox kernel) and in eval mode it is ``torch.nn.Dropout``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_WORD_RANGE = (-(2**63), 2**63 - 1)
"""``random_``'s bounds for uniform 64-bit words (the upper bound is exclusive: one word of 2^64
never comes, a bias of 2^-64)."""


def keep_mask(shape: torch.Size | tuple[int, ...], p: float,
              generator: torch.Generator | None = None) -> torch.Tensor:  # fmt: skip
    """A boolean CPU tensor of ``shape`` whose elements are true with probability ``1 - p``
    (resolved to 2^-32), independently."""
    n = math.prod(shape)
    words = torch.empty((n + 1) // 2, dtype=torch.int64)
    words.random_(*_WORD_RANGE, generator=generator)
    threshold = round(p * 2**32) - 2**31  # int32 values below it: a share p of the 2^32
    return words.view(torch.int32)[:n].view(shape) >= threshold


class WordDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` with :func:`keep_mask` on CPU tensors in training mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training, self.inplace)
        scale = (keep_mask(x.shape, self.p) * (1.0 / (1.0 - self.p))).to(x.dtype)
        return x.mul_(scale) if self.inplace else x * scale


def use_word_dropout(model: torch.nn.Module) -> int:
    """Swap every ``torch.nn.Dropout`` that peft made for a LoRA adapter (in ``lora_dropout``
    containers) for a :class:`WordDropout` of the same ``p``. Returns how many were swapped."""
    swapped = 0
    for name, module in model.named_modules():
        if not name.endswith("lora_dropout"):
            continue
        for key, drop in list(module.items()):
            if type(drop) is torch.nn.Dropout:
                module[key] = WordDropout(drop.p, drop.inplace)
                swapped += 1
    return swapped

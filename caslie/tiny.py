"""Offline tiny models (``tiny:mistral``, ``tiny:llama``, ``tiny:llava``, ``tiny:clip``...), no network.

A tiny model is a randomly initialised transformers model of the named architecture with a BPE
tokenizer trained on the shipped sample's text. It is built once, saved with ``save_pretrained``
under ``$CASLIE_CACHE/tiny/<name>`` (default ``~/.cache/caslie``), and from then on loaded with the
same ``from_pretrained`` calls a hub id goes through. Only :mod:`caslie.pretrained` reaches this
module, when it resolves a ``tiny:<name>`` id; tests and demos use it through that resolver.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from caslie.config import DataConfig
from caslie.data.records import load_records
from caslie.data.sources import SAMPLE_ROWS
from caslie.prompts import MISTRAL_WITH_OPTIONS, REFERENCE_SYSTEM, cqe_prompt

SPECIAL_MISTRAL = ["<unk>", "<s>", "</s>", "<pad>"]
SPECIAL_LLAMA = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                 "<|end_header_id|>", "<|finetune_right_pad_id|>"]  # fmt: skip

MISTRAL_CHAT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
LLAMA_CHAT = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] "
    "+ '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Shape of a tiny model."""

    architecture: str
    vocab_size: int = 2048
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 128
    decisive: bool = False
    """Boost the output rows of "yes" and "no", so the random model answers yes or no (a voter)."""
    model_vocab: int | None = None
    """Rows of the embedding and LM head when a real model's vocabulary is wanted (the tokenizer
    keeps ``vocab_size``; the extra rows are never produced, but cost in the LM head what a real
    vocabulary costs)."""


TINY = {
    "mistral": TinySpec("mistral"),
    "llama": TinySpec("llama"),
    "llava": TinySpec("llava"),
    "clip": TinySpec("clip"),
    "voter-llama": TinySpec("llama", decisive=True),
    "voter-mistral": TinySpec("mistral", decisive=True),
    # benchmarks/train_throughput.py: wide enough that matrix products, not Python, set the pace
    "wide-mistral": TinySpec("mistral", hidden_size=256, layers=4, heads=8, intermediate_size=896),
    # the same with Mistral-7B-v0.3's 32768-row embedding and LM head
    "wide-mistral-32k": TinySpec(
        "mistral", hidden_size=256, layers=4, heads=8, intermediate_size=896, model_vocab=32768
    ),
    # benchmarks/gpu_check.sh: a 1.1B-parameter random model, to measure GPU paths at a real size
    "bench-1b": TinySpec(
        "mistral", hidden_size=2048, layers=24, heads=16, kv_heads=8, intermediate_size=5632
    ),
}
"""Tiny model names usable as ``tiny:<name>`` (``llava``: a CLIP vision tower + a tiny Llama)."""

LLAVA_CHAT = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def cache_root() -> Path:
    """Where built tiny models live (``$CASLIE_CACHE`` or ``~/.cache/caslie``)."""
    return Path(os.environ.get("CASLIE_CACHE", Path.home() / ".cache" / "caslie"))


def _corpus() -> list[str]:
    """Training text for the tokenizer: the sample's rows as prompts would show them."""
    texts = [MISTRAL_WITH_OPTIONS]
    with SAMPLE_ROWS.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            texts += [
                row["instruction"],
                row["input"],
                row["options"],
                row["output"],
                row["caption_info"],
            ]
    return texts


def build_tokenizer(name: str):
    """Train a byte-level BPE tokenizer for ``tiny:<name>`` on the sample text.

    Returns:
        A ``PreTrainedTokenizerFast`` with BOS/EOS/PAD (PAD distinct from EOS) and a chat template
        in the style of the named family.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = TINY[name]
    mistral = spec.architecture == "mistral"
    special = SPECIAL_MISTRAL if mistral else SPECIAL_LLAMA
    tok = Tokenizer(models.BPE(unk_token="<unk>" if mistral else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if mistral:
        bos, eos, pad, chat = "<s>", "</s>", "<pad>", MISTRAL_CHAT
        extra = {"unk_token": "<unk>"}
    else:
        bos, eos, pad, chat = (
            "<|begin_of_text|>",
            "<|eot_id|>",
            "<|finetune_right_pad_id|>",
            LLAMA_CHAT,
        )
        extra = {}
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad, **extra
    )
    fast.chat_template = chat
    return fast


def build_model(name: str, tokenizer, seed: int = 0):
    """A randomly initialised tiny causal LM of the named architecture."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    spec = TINY[name]
    config_cls = MistralConfig if spec.architecture == "mistral" else LlamaConfig
    config = config_cls(
        vocab_size=max(len(tokenizer), spec.model_vocab or 0),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if spec.decisive:
            _make_decisive(model, tokenizer)
        return model


def _calibration_prompts(tokenizer) -> list[str]:
    """The default (reference) CQE prompts for the sample's captions, with the reference system
    message, in the tokenizer's chat template: what a text voter sees by default."""
    records, _ = load_records(DataConfig(source="sample"), splits=["train", "val"])
    prompts = [cqe_prompt(r, j, c, "reference") for r in records
               for j, c in enumerate(r.captions or ()) if c]  # fmt: skip
    system = {"role": "system", "content": REFERENCE_SYSTEM}
    return [tokenizer.apply_chat_template([system, {"role": "user", "content": p}],
                                          add_generation_prompt=True, tokenize=False)
            for p in prompts]  # fmt: skip


def _make_decisive(model, tokenizer) -> None:
    """Set the output rows of "yes" and "no" so that the model answers one of them, and which one
    depends on the prompt: both share a large component along the mean final hidden state, and
    differ along the direction in which the sample's CQE prompts vary most (about half say yes)."""
    import torch

    tokenizer.padding_side = "left"
    enc = tokenizer(
        _calibration_prompts(tokenizer), padding=True, return_tensors="pt", add_special_tokens=False
    )
    with torch.no_grad():
        hidden = model.model(**enc).last_hidden_state[:, -1].float()
        mean = hidden.mean(0)
        spread = torch.linalg.svd(hidden - mean, full_matrices=False).Vh[0]
        spread = spread - (spread @ mean) / (mean @ mean) * mean  # no share of the common part
        spread = spread / spread.norm()
        common = mean / mean.norm()
        s = 12.0 / float((hidden @ common).mean())
        k = 6.0 / float(((hidden - mean) @ spread).std())
        head = model.get_output_embeddings().weight
        yes, no = (tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
        head[yes] = s * common + k / 2 * spread
        head[no] = s * common - k / 2 * spread


def build_llava(tokenizer, seed: int = 0):
    """A tiny LLaVA (CLIP vision tower, projector, tiny Llama) and its processor.

    ``tokenizer`` is the tiny Llama tokenizer; an ``<image>`` token is added to it.
    """
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers: the PIL processor is the default one
        from transformers import CLIPImageProcessor as ImageProcessor

    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    spec = TINY["llama"]
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14, projection_dim=32)  # fmt: skip
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
                       num_hidden_layers=spec.layers, num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    images = ImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14, chat_template=LLAVA_CHAT,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)  # fmt: skip
    return model, processor


def build_clip(seed: int = 0):
    """A tiny CLIP (56 px images, 77-token texts) with a processor around the tiny BPE tokenizer.

    CLIP pools a text at its EOS token, so this tokenizer ends every text with EOS.
    """
    import torch
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers: the PIL processor is the default one
        from transformers import CLIPImageProcessor as ImageProcessor

    tok = build_tokenizer("llama")
    bos, eos = tok.bos_token, tok.eos_token
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, tok.bos_token_id), (eos, tok.eos_token_id)]
    )
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=56, patch_size=14)  # fmt: skip
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    images = ImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    return model, CLIPProcessor(image_processor=images, tokenizer=tok)


def ensure_tiny(name: str) -> Path:
    """Build ``tiny:<name>`` once (atomically) and return its folder."""
    if name not in TINY:  # resolve_pretrained names the setting; this guards direct calls
        raise KeyError(f"unknown tiny model 'tiny:{name}' (available: {', '.join(TINY)})")
    target = cache_root() / "tiny" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if name in ("llava", "clip"):
            model, processor = (
                build_llava(build_tokenizer("llama")) if name == "llava" else build_clip()
            )
            processor.save_pretrained(tmp)
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            tokenizer = build_tokenizer(name)
            tokenizer.save_pretrained(tmp)
            build_model(name, tokenizer).save_pretrained(tmp, safe_serialization=True)
        with contextlib.suppress(
            OSError
        ):  # another process finished first; theirs is as good as ours
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target

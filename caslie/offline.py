"""Offline tiny models: ``tiny:mistral`` and ``tiny:llama`` built locally, no network.

A tiny model is a randomly initialised transformers model of the named architecture with a BPE
tokenizer trained on the shipped sample's text. It is built once, saved with ``save_pretrained``
under ``$CASLIE_CACHE/tiny/<name>`` (default ``~/.cache/caslie``), and from then on loaded with the
same ``from_pretrained`` calls a hub id goes through.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from caslie.hub import require_hub

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


TINY = {
    "mistral": TinySpec("mistral"),
    "llama": TinySpec("llama"),
}
"""Tiny model names usable as ``tiny:<name>``."""


def cache_root() -> Path:
    """Where built tiny models live (``$CASLIE_CACHE`` or ``~/.cache/caslie``)."""
    return Path(os.environ.get("CASLIE_CACHE", Path.home() / ".cache" / "caslie"))


def _corpus() -> list[str]:
    """Training text for the tokenizer: the sample's rows as prompts would show them."""
    from caslie.data.records import SAMPLE_ROWS
    from caslie.prompts import MISTRAL_WITH_OPTIONS

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
    special = SPECIAL_MISTRAL if name == "mistral" else SPECIAL_LLAMA
    tok = Tokenizer(models.BPE(unk_token="<unk>" if name == "mistral" else None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    if name == "mistral":
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
        vocab_size=len(tokenizer),
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
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def ensure_tiny(name: str) -> Path:
    """Build ``tiny:<name>`` once (atomically) and return its folder."""
    if name not in TINY:
        raise ValueError(f"unknown tiny model 'tiny:{name}' (available: {', '.join(TINY)})")
    target = cache_root() / "tiny" / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
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


def resolve_pretrained(name_or_path: str, what: str = "model") -> str:
    """Map a config's model id to what ``from_pretrained`` should load.

    ``tiny:<name>`` is built locally; an existing folder is used as is; anything else is a hub id,
    checked for reachability first so that offline machines fail at once with a clear message.

    Raises:
        FileNotFoundError: a local path that does not exist.
        HubUnavailableError: a hub id while the hub cannot be reached.
    """
    if name_or_path.startswith("tiny:"):
        return str(ensure_tiny(name_or_path.split(":", 1)[1]))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"{what} path '{name_or_path}' does not exist")
    require_hub(
        name_or_path, what, "set model.name_or_path to a local folder or a tiny:<name> model"
    )
    return name_or_path


def tokenizer_for(model_cfg) -> object:
    """The tokenizer a model config names (``model.tokenizer``, else the model's own)."""
    return load_tokenizer(
        model_cfg.tokenizer or model_cfg.name_or_path,
        model_cfg.revision,
        model_cfg.trust_remote_code,
    )


def load_tokenizer(name_or_path: str, revision: str | None = None, trust_remote_code: bool = False):
    """Load a tokenizer through ``AutoTokenizer`` (tiny, local or hub), with a pad token.

    A tokenizer without a pad token gets a dedicated one (never EOS: a model trained with PAD == EOS
    never learns to stop).
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        resolve_pretrained(name_or_path, "tokenizer"),
        revision=revision,
        trust_remote_code=trust_remote_code,
    )
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        tok.add_special_tokens({"pad_token": "<|pad|>"})
    return tok

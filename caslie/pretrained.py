"""The one home for pretrained loading: resolve a checkpoint name, then load its parts alike.

Every model the project runs (the LoRA base, the CLIP baseline, EC3 captioners, CQE voters) is named
by a :class:`Checkpoint` and loaded here, with the same keyword arguments: ``dtype``, ``revision``,
``attn_implementation`` and ``trust_remote_code``. A name resolves to:

* ``tiny:<name>``: a tiny random model built locally by :mod:`caslie.tiny` (tests, demos);
* an existing folder: used as it is;
* anything else: a hub id, checked for reachability first, so an offline machine fails within
  seconds with a message that names the id.

Whatever is missing (offline and not cached, gated, no such repo, revision or file, a folder
without weights or tokenizer files) ends in one :class:`~caslie.errors.UnavailableError` line,
worded by :func:`caslie.hub.unavailable`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from caslie import tiny
from caslie.errors import CaslieError, ConfigError, MissingPathError
from caslie.hub import WEIGHT_SUFFIXES, Wanted, first_line, require_hub, unavailable

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
"""``model.dtype`` names and their torch dtypes (``auto`` is decided by :func:`resolve_dtype`)."""

PAD_TOKEN = "<|pad|>"
"""The pad token added to a training tokenizer that has no usable one (the last resort: it grows the
vocabulary, so the embeddings are resized)."""

RESERVED_PADS = ("<|finetune_right_pad_id|>",)
"""Tokens a tokenizer family reserves for padding (Llama-3's), used before adding a new one."""


def resolve_dtype(name: str) -> torch.dtype:
    """The weights dtype for a ``dtype`` setting: ``auto`` is bf16 on GPUs that have it, else fp16
    on older GPUs (with a warning) and fp32 on CPU."""
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


def tiny_names() -> list[str]:
    """The offline tiny models a config can name as ``tiny:<name>``."""
    return list(tiny.TINY)


def resolve_pretrained(name_or_path: str, what: str = "model", revision: str | None = None) -> str:
    """Map a config's model id to what ``from_pretrained`` should load.

    Raises:
        MissingPathError: a local path that does not exist.
        ConfigError: an unknown ``tiny:<name>``.
        HubUnavailableError: a hub id while the hub cannot be reached.
    """
    if name_or_path.startswith("tiny:"):
        name = name_or_path.split(":", 1)[1]
        if name not in tiny.TINY:
            raise ConfigError(
                f"unknown tiny model 'tiny:{name}' for {what} (available: "
                f"{', '.join('tiny:' + n for n in tiny.TINY)})"
            )
        return str(tiny.ensure_tiny(name))
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise MissingPathError(f"{what} path '{name_or_path}' does not exist")
    require_hub(Wanted(name_or_path, what, revision=revision))
    return name_or_path


@dataclass(frozen=True)
class Checkpoint:
    """A pretrained checkpoint and how to load it.

    Attributes:
        name_or_path: Hub id, local folder, or ``tiny:<name>``.
        revision: Hub revision (branch, tag or commit) to pin.
        dtype: ``auto``, ``bfloat16``, ``float16`` or ``float32``.
        attn_implementation: Attention kernel, or ``None`` for the library default.
        trust_remote_code: Allow model code from the hub.
        what: What the checkpoint is for, in messages (``voter 'x'``, ``captioning model``).
    """

    name_or_path: str
    revision: str | None = None
    dtype: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    what: str = "model"

    @classmethod
    def from_config(cls, section: Any, name_or_path: str | None = None,
                    what: str = "model.name_or_path"):  # fmt: skip
        """A checkpoint from a config section (``model``, ``caption`` or ``cqe``): the fields it
        has are used, the others keep their defaults. ``what`` names the setting in messages (the
        ``model`` section's by default; the other sections pass theirs)."""
        return cls(
            name_or_path=name_or_path or section.name_or_path,
            revision=getattr(section, "revision", None),
            dtype=getattr(section, "dtype", "auto"),
            attn_implementation=getattr(section, "attn_implementation", None),
            trust_remote_code=getattr(section, "trust_remote_code", False),
            what=what,
        )

    def path(self) -> str:
        """What ``from_pretrained`` loads (see :func:`resolve_pretrained`)."""
        return resolve_pretrained(self.name_or_path, self.what, self.revision)

    def wanted(self, part: str, path: str) -> Wanted:
        """How messages name this checkpoint's ``part`` loaded from ``path`` (:meth:`path`); a
        folder's revision plays no part, so it is not named."""
        folder = Path(path) if Path(path).is_dir() else None
        return Wanted(self.name_or_path, self.what, part, None if folder else self.revision,
                      folder=folder)  # fmt: skip

    def revision_key(self) -> str:
        """What identifies these weights, found without loading them (votes are keyed by it).

        A hub id is ``<id>@<commit>``: the commit its revision points to in the local hub cache,
        else the revision as given. A folder (a ``tiny:`` model too) is a hash of its
        ``config.json`` and of each weight file's name and blob (a hub-cache link) or size and
        modification time, so new weights under the same name give a new key.
        """
        if self.name_or_path.startswith("tiny:") or Path(self.name_or_path).expanduser().exists():
            return _folder_key(Path(self.path()))
        revision = self.revision or "main"
        return f"{self.name_or_path}@{_cached_commit(self.name_or_path, revision) or revision}"

    def common_kwargs(self) -> dict[str, Any]:
        """Keyword arguments every ``from_pretrained`` call of this checkpoint takes."""
        return {"revision": self.revision, "trust_remote_code": self.trust_remote_code}

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for loading the model's weights."""
        kwargs = self.common_kwargs() | {"dtype": resolve_dtype(self.dtype)}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        return kwargs


def _folder_key(folder: Path) -> str:
    digest = hashlib.blake2b(digest_size=8)
    config = folder / "config.json"
    digest.update(config.read_bytes() if config.is_file() else b"")
    for path in sorted(folder.rglob("*")):
        if path.suffix not in WEIGHT_SUFFIXES or not path.is_file():
            continue
        stat = path.stat()
        blob = path.resolve().name if path.is_symlink() else f"{stat.st_size}:{stat.st_mtime_ns}"
        digest.update(f"{path.relative_to(folder)}={blob};".encode())
    return f"local:{digest.hexdigest()}"


def _cached_commit(repo_id: str, revision: str) -> str | None:
    """The commit ``revision`` of ``repo_id`` points to in the local hub cache, if downloaded."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    try:
        return ref.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def load_model(ckpt: Checkpoint, auto_class: Any, dtype: torch.dtype | None = None) -> Any:
    """Load the weights with ``auto_class.from_pretrained`` (``AutoModelForCausalLM``, ``CLIPModel``...).

    Args:
        ckpt: The checkpoint.
        auto_class: A transformers class with ``from_pretrained``.
        dtype: Overrides the checkpoint's dtype setting.
    """
    kwargs = ckpt.model_kwargs()
    if dtype is not None:
        kwargs["dtype"] = dtype
    path = ckpt.path()
    # Only OSError falls back: a ValueError (a config that is no causal LM) is the caller's to word.
    with _loading(ckpt, "weights", path, unloadable=(OSError,)):
        return auto_class.from_pretrained(path, **kwargs)


@contextmanager
def _loading(ckpt: Checkpoint, part: str, path: str,
             unloadable: tuple[type[Exception], ...] = (OSError, ValueError)) -> Iterator[None]:  # fmt: skip
    """Every ``from_pretrained`` runs in this: a missing checkpoint, part or file becomes the one
    line :func:`caslie.hub.unavailable` words; other ``unloadable`` errors become a
    :class:`ConfigError` with the library's first line."""
    try:
        yield
    except CaslieError:
        raise
    except Exception as err:
        wanted = ckpt.wanted(part, path)
        missing = unavailable(err, wanted)
        if missing is not None:
            raise missing from None
        if isinstance(err, unloadable):
            raise ConfigError(f"{wanted.subject()}: {first_line(err)}") from None
        raise


def model_config(ckpt: Checkpoint) -> Any:
    """The checkpoint's transformers config (``AutoConfig``), without loading weights.

    Raises:
        UnavailableError: a config that is missing (not cached offline, not on the hub...).
        ConfigError: a folder or id that holds no loadable config.
    """
    from transformers import AutoConfig

    path = ckpt.path()
    with _loading(ckpt, "config", path):
        return AutoConfig.from_pretrained(path, **ckpt.common_kwargs())


def repeated_layers(ckpt: Checkpoint, causal_lm: bool = True, names: list[str] | None = None
                    ) -> set[type]:  # fmt: skip
    """The module classes a sharding strategy wraps one by one: ``names``, or the model's own
    ``_no_split_modules`` (its decoder layers), looked up in the model's transformers module.

    Args:
        ckpt: The checkpoint.
        causal_lm: The model is loaded as a causal LM (else as its base model, as CLIP is).
        names: Class names to use instead of the model's own.

    Raises:
        ConfigError: the model class cannot be found, or names no such layer class.
    """
    import sys

    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    config = model_config(ckpt)
    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if causal_lm else MODEL_MAPPING
    try:
        model_cls = mapping[type(config)]
    except KeyError:
        raise ConfigError(
            f"no transformers model class for {ckpt.what} '{ckpt.name_or_path}' "
            f"({type(config).__name__}): set trainer.fsdp.layer_classes"
        ) from None
    wanted = list(names or []) or list(getattr(model_cls, "_no_split_modules", None) or [])
    if not wanted:
        raise ConfigError(f"{model_cls.__name__} names no decoder layer class: set "
                          "trainer.fsdp.layer_classes")  # fmt: skip
    home = sys.modules[model_cls.__module__]
    found = {n: getattr(home, n, None) for n in wanted}
    missing = sorted(n for n, cls in found.items() if cls is None)
    if missing:
        raise ConfigError(f"trainer.fsdp.layer_classes: {', '.join(missing)} not found in "
                          f"{model_cls.__module__}")  # fmt: skip
    return {cls for cls in found.values() if cls is not None}


def load_processor(ckpt: Checkpoint) -> Any:
    """The checkpoint's processor (``AutoProcessor``: tokenizer plus image processor)."""
    from transformers import AutoProcessor

    path = ckpt.path()
    with _loading(ckpt, "processor", path):
        return AutoProcessor.from_pretrained(path, **ckpt.common_kwargs())


def load_tokenizer(ckpt: Checkpoint | str, pad: str = "distinct") -> Any:
    """The checkpoint's tokenizer (``AutoTokenizer``) with a pad token.

    Args:
        ckpt: The checkpoint (or a bare name, loaded with default settings).
        pad: ``distinct`` for training: a tokenizer without a pad token, or whose pad is EOS, gets
            :data:`PAD_TOKEN` (a model trained with PAD == EOS never learns to stop). ``eos`` for
            generation only: padding is masked out, so EOS may pad and the vocabulary stays as is.
    """
    from transformers import AutoTokenizer

    if isinstance(ckpt, str):
        ckpt = Checkpoint(ckpt, what="tokenizer")
    path = ckpt.path()
    with _loading(ckpt, "tokenizer", path):
        tok = AutoTokenizer.from_pretrained(path, **ckpt.common_kwargs())
    if pad == "eos":
        pad_for_generation(tok)
    else:
        pad_for_training(tok)
    return tok


def pad_for_training(tokenizer: Any) -> None:
    """Give ``tokenizer`` a pad token distinct from EOS, without growing the vocabulary when it can.

    In order: its own pad token; its unknown token (what eCeLLM padded Mistral and Llama-2 with);
    a reserved pad token (Llama-3's ``<|finetune_right_pad_id|>``); last, a new :data:`PAD_TOKEN`,
    which makes the model's embeddings grow (and is logged).
    """
    eos = tokenizer.eos_token_id
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != eos:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token_id not in (None, eos):
        tokenizer.pad_token = tokenizer.unk_token
        return
    vocab = tokenizer.get_vocab()
    for token in RESERVED_PADS:
        if token in vocab and vocab[token] != eos:
            tokenizer.pad_token = token
            return
    log.warning(
        "the tokenizer has no pad, unknown or reserved pad token: adding %s, so the model's "
        "embeddings grow by one row (an adapter then carries the resized shapes)",
        PAD_TOKEN,
    )
    tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})


def pad_for_generation(tokenizer: Any) -> None:
    """Left padding for batched generation; EOS pads when there is no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def tokenizer_for(model_cfg: Any) -> Any:
    """The training tokenizer a ``model`` config section names (``model.tokenizer``, else the
    model's own)."""
    name = model_cfg.tokenizer or model_cfg.name_or_path
    what = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
    return load_tokenizer(Checkpoint.from_config(model_cfg, name, what=what))

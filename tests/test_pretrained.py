"""Pretrained loading: name resolution with fast offline failure, dtypes, tokenizer padding."""

import time

import pytest
import torch

from caslie.errors import ConfigError, HubUnavailableError, MissingPathError
from caslie.pretrained import (
    PAD_TOKEN,
    Checkpoint,
    load_tokenizer,
    model_config,
    precision_for,
    resolve_dtype,
    resolve_pretrained,
)
from caslie.tiny import ensure_tiny


def test_dtype_and_precision_on_this_machine():
    assert resolve_dtype("auto") == (
        torch.float32 if not torch.cuda.is_available() else resolve_dtype("auto")
    )
    assert resolve_dtype("bfloat16") == torch.bfloat16
    assert precision_for(torch.bfloat16) == "bf16-mixed"
    assert precision_for(torch.float16) == "16-mixed"
    assert precision_for(torch.float32) == "32-true"


def test_names_resolve_to_tiny_folders_local_folders_or_clear_errors(tmp_path):
    assert resolve_pretrained("tiny:mistral") == str(ensure_tiny("mistral"))
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    with pytest.raises(
        ConfigError, match=r"unknown tiny model 'tiny:mistrall' for model .*tiny:mistral"
    ):
        resolve_pretrained("tiny:mistrall")
    with pytest.raises(MissingPathError, match="voter 'v' path './no/such' does not exist"):
        resolve_pretrained("./no/such", "voter 'v'")


def test_hub_ids_fail_fast_offline_naming_the_id():
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="captioning model 'org/some-vlm'"):
        Checkpoint("org/some-vlm", what="captioning model").path()
    assert time.monotonic() - start < 30


def test_every_load_takes_the_checkpoints_settings():
    ckpt = Checkpoint("tiny:llama", revision=None, dtype="float32", attn_implementation="eager")
    assert ckpt.model_kwargs() == {
        "revision": None,
        "trust_remote_code": False,
        "dtype": torch.float32,
        "attn_implementation": "eager",
    }
    assert model_config(ckpt).model_type == "llama"


def test_training_tokenizers_get_a_distinct_pad_and_generation_ones_pad_left(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ensure_tiny("llama"))
    tok.pad_token = None
    tok.save_pretrained(tmp_path / "nopad")
    train = load_tokenizer(Checkpoint(str(tmp_path / "nopad")))
    assert train.pad_token == PAD_TOKEN and train.pad_token_id != train.eos_token_id
    generate = load_tokenizer(Checkpoint(str(tmp_path / "nopad")), pad="eos")
    assert generate.pad_token == generate.eos_token and generate.padding_side == "left"
    assert len(generate) == len(tok)  # generation never grows the vocabulary

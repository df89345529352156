"""Pretrained loading: name resolution with fast offline failure, dtypes, tokenizer padding."""

import time
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

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


def _without_pad(name: str, folder: Path, rename_reserved: bool = False) -> Path:
    tok = AutoTokenizer.from_pretrained(ensure_tiny(name))
    tok.pad_token = None
    tok.save_pretrained(folder)
    if rename_reserved:
        for file in ("tokenizer.json", "tokenizer_config.json"):
            path = folder / file
            path.write_text(path.read_text().replace("<|finetune_right_pad_id|>", "<|reserved_9|>"))
    return folder


def test_training_pads_reuse_unk_or_a_reserved_token_before_growing_the_vocabulary(tmp_path):
    mistral = load_tokenizer(Checkpoint(str(_without_pad("mistral", tmp_path / "m"))))
    assert mistral.pad_token == mistral.unk_token == "<unk>"  # as eCeLLM padded Mistral/Llama-2
    llama_folder = _without_pad("llama", tmp_path / "l")
    llama = load_tokenizer(Checkpoint(str(llama_folder)))
    assert llama.pad_token == "<|finetune_right_pad_id|>"  # Llama-3's reserved pad
    assert len(llama) == len(AutoTokenizer.from_pretrained(llama_folder))  # no new token
    last = load_tokenizer(
        Checkpoint(str(_without_pad("llama", tmp_path / "r", rename_reserved=True)))
    )
    assert last.pad_token == PAD_TOKEN and last.pad_token_id != last.eos_token_id


def test_generation_tokenizers_pad_left_with_eos(tmp_path):
    tok = AutoTokenizer.from_pretrained(ensure_tiny("llama"))
    _without_pad("llama", tmp_path / "nopad")
    generate = load_tokenizer(Checkpoint(str(tmp_path / "nopad")), pad="eos")
    assert generate.pad_token == generate.eos_token and generate.padding_side == "left"
    assert len(generate) == len(tok)  # generation never grows the vocabulary


@pytest.mark.slow
def test_a_real_vocabulary_widens_the_embedding_and_lm_head_not_the_tokenizer(
    tmp_path, monkeypatch
):
    from transformers import AutoConfig

    monkeypatch.setenv("CASLIE_CACHE", str(tmp_path))
    wide, real = ensure_tiny("wide-mistral"), ensure_tiny("wide-mistral-32k")
    assert AutoConfig.from_pretrained(real).vocab_size == 32768
    assert AutoConfig.from_pretrained(wide).vocab_size < 32768
    text = "A 500 ml stainless steel water bottle, leak-proof lid."
    ids = [AutoTokenizer.from_pretrained(p)(text)["input_ids"] for p in (wide, real)]
    assert ids[0] == ids[1]

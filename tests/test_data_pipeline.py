"""Rows -> fused prompts -> tokenised Arrow datasets: answer-only labels, trimming, the build cache."""

import pytest

from caslie.data.pipeline import build_dataset
from caslie.data.tokenize import IGNORE_INDEX, collate_train
from caslie.errors import DataError


def test_loss_covers_only_the_answer_and_eos(sample_config, tokenizer):
    built = build_dataset(sample_config().data, tokenizer)
    train = built.splits["train"]
    batch = collate_train([train[i] for i in range(6)], tokenizer.pad_token_id, 8)
    assert batch["input_ids"].shape[1] % 8 == 0
    for i in range(6):
        row = train[i]
        labelled = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX].tolist()
        assert tokenizer.decode(labelled) == row["target"] + tokenizer.eos_token
        assert batch["attention_mask"][i].sum() == row["length"]
        assert batch["input_ids"][i][row["length"] :].eq(tokenizer.pad_token_id).all()
        prompt = tokenizer.decode(row["input_ids"][: row["prompt_len"]], skip_special_tokens=True)
        assert prompt == row["prompt"]


def test_truncation_trims_the_input_never_the_answer(sample_config, tokenizer):
    built = build_dataset(
        sample_config("data.max_length=230", "data.tasks=[ap,sa,psi]").data, tokenizer
    )
    trimmed = sum(built.manifest["trimmed"].values())
    assert trimmed > 0
    for split in built.splits.values():
        for row in split:
            assert row["length"] <= 230
            answer = tokenizer.decode(row["input_ids"][row["prompt_len"] :])
            assert answer == row["target"] + tokenizer.eos_token
            if row["trimmed"]:
                assert row["prompt"].endswith("[/INST] ### Response:\n")
                assert "### Instruction:" in row["prompt"]


def test_examples_that_cannot_fit_raise_or_are_skipped(sample_config, tokenizer):
    with pytest.raises(DataError, match="do not fit data.max_length=64"):
        build_dataset(sample_config("data.max_length=64").data, tokenizer)
    built = build_dataset(sample_config("data.max_length=64", "data.on_error=skip").data, tokenizer)
    assert built.manifest["too_long_dropped"] > 0


def test_second_build_comes_from_the_cache_and_inputs_invalidate_it(
    sample_config, tokenizer, tmp_path
):
    cfg = sample_config()
    first = build_dataset(cfg.data, tokenizer)
    second = build_dataset(cfg.data, tokenizer)
    assert not first.from_cache and second.from_cache
    assert second.splits["train"]["input_ids"] == first.splits["train"]["input_ids"]
    assert build_dataset(sample_config("data.fusion=uia").data, tokenizer).from_cache is False
    assert build_dataset(sample_config("data.max_length=400").data, tokenizer).from_cache is False

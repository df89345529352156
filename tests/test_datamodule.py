import random

import pytest
import torch

from caslie.data.pipeline import build_dataset
from caslie.data.records import DataError
from caslie.data.sampler import LengthGroupedBatchSampler, padding_share
from caslie.data.tokenize import IGNORE_INDEX, collate_generate, collate_train
from datamodules.mmec import MMECDataModule


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


def test_generation_batches_are_left_padded_prompts(sample_config, tokenizer):
    test = build_dataset(sample_config().data, tokenizer).splits["test_ind"]
    feats = [test[i] for i in range(5)]
    batch = collate_generate(feats, tokenizer.pad_token_id, 8)
    for i, f in enumerate(feats):
        n = f["prompt_len"]
        assert batch["input_ids"][i, -n:].tolist() == f["input_ids"][:n]
        assert batch["attention_mask"][i, :-n].sum() == 0
    assert [m["id"] for m in batch["meta"]] == [f["id"] for f in feats]
    assert [m["gold"] for m in batch["meta"]] == [f["target"] for f in feats]


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


def test_task_specific_module_and_loaders(sample_config, tokenizer):
    dm = MMECDataModule(
        sample_config("data.tasks=sa").data, tokenizer, micro_batch_size=4, eval_batch_size=8
    )
    dm.prepare_data()
    dm.setup("fit")
    assert set(dm.splits["train"]["task"]) == {"sa"}
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and all(b["input_ids"].shape[0] == 4 for b in batches)
    assert next(iter(dm.val_dataloader()[0]))["labels"].shape[0] == 4
    test_loaders = dm.test_dataloader()
    assert len(test_loaders) == 3  # val, test_ind, test_ood
    ids = [m["id"] for b in test_loaders[1] for m in b["meta"]]
    assert sorted(ids) == sorted(dm.splits["test_ind"]["id"])


def test_split_without_rows_is_explained(sample_config, tokenizer):
    dm = MMECDataModule(sample_config("data.tasks=psi").data, tokenizer)
    with pytest.raises(ValueError, match="split 'test_ood' has no rows for tasks"):
        dm.eval_dataloader("test_ood")


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_gives_every_rank_equal_batches_covering_all_rows(world):
    lengths = [random.Random(i).randint(5, 500) for i in range(103)]
    per_rank = [
        list(LengthGroupedBatchSampler(lengths, 4, seed=1, rank=r, world_size=world))
        for r in range(world)
    ]
    assert len({len(b) for b in per_rank}) == 1
    assert all(len(batch) == 4 for batches in per_rank for batch in batches)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert set(seen) == set(range(103))
    assert len(seen) - 103 < 4 * world  # only the last global batch is topped up


def test_sampler_epochs_reshuffle_and_longest_batch_comes_first():
    lengths = list(range(1, 201))
    s = LengthGroupedBatchSampler(lengths, 8, seed=0, group=4)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1  # a new order each epoch
    assert max(lengths[i] for i in e0[0]) == 200


def test_length_grouping_cuts_padding():
    lengths = [random.Random(i).randint(20, 900) for i in range(4000)]
    grouped = list(LengthGroupedBatchSampler(lengths, 8, seed=0))
    plain = list(LengthGroupedBatchSampler(lengths, 8, seed=0, group_by_length=False))
    assert padding_share(lengths, grouped) < 0.05 < padding_share(lengths, plain)


def test_eval_sampler_is_deterministic_longest_first():
    lengths = [3, 9, 1, 7]
    batches = list(LengthGroupedBatchSampler(lengths, 2, shuffle=False))
    assert batches == [[1, 3], [0, 2]]
    assert torch.equal(
        torch.tensor(batches),
        torch.tensor(list(LengthGroupedBatchSampler(lengths, 2, shuffle=False))),
    )

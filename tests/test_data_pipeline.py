"""Rows -> fused prompts -> tokenised Arrow datasets: answer-only labels, trimming, the build cache."""

import json

import pytest

from caslie.data.fusion import fuse_records
from caslie.data.pipeline import build_dataset
from caslie.data.records import load_records
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


def _input_of(prompt: str):
    return json.loads(
        prompt.split("### Input:\n", 1)[1].split("\n\n### Options:", 1)[0].split("\n\n [/INST]")[0]
    )


def test_trimming_shortens_training_inputs_as_valid_json_never_the_answer_or_eval_prompts(
    sample_config, tokenizer
):
    cfg = sample_config("data.max_length=230", "data.tasks=[ap,sa,psi]")
    built = build_dataset(cfg.data, tokenizer)
    assert sum(built.manifest["trimmed"].values()) > 0
    assert all(key.endswith("/train") for key in built.manifest["trimmed"])
    records = {
        r.id: r for r in load_records(cfg.data, splits=["train", "val", "test_ind", "test_ood"])[0]
    }
    longest_eval = 0
    for split, rows in built.splits.items():
        for row in rows:
            answer = tokenizer.decode(row["input_ids"][row["prompt_len"] :])
            assert answer == row["target"] + tokenizer.eos_token
            fused = _input_of(row["prompt"])  # valid JSON, trimmed or not
            original = records[row["id"]].input
            if split == "train":
                assert row["length"] <= 230
            else:
                assert not row["trimmed"]
                longest_eval = max(longest_eval, row["length"])
            if row["trimmed"]:
                untrimmed = json.loads(
                    fuse_records([records[row["id"]]], cfg.data)[0][0].input_text
                )
                assert set(fused) == set(untrimmed) >= set(original)  # every field is still there
                longest = max(untrimmed, key=lambda k: len(str(untrimmed[k])))
                assert len(fused[longest]) < len(untrimmed[longest])
                assert all(untrimmed[k].startswith(v) for k, v in fused.items() if v)
    assert longest_eval > 230  # evaluation prompts keep their full length


def test_sr_trimming_keeps_the_newest_history(sample_config, tokenizer):
    cfg = sample_config("data.max_length=560", "data.tasks=[sr]", "data.fusion=uia")
    built = build_dataset(cfg.data, tokenizer)
    records = {r.id: r for r in load_records(cfg.data, splits=["train"])[0]}
    trimmed = [row for row in built.splits["train"] if row["trimmed"]]
    assert trimmed and built.manifest["trimmed"]["sr/train"] == len(trimmed)
    for row in trimmed:
        kept = _input_of(row["prompt"])
        history = records[row["id"]].input
        assert 0 < len(kept) < len(history)
        # the newest items stay (each with its fused caption appended)
        newest = history[len(history) - len(kept) :]
        assert all(k.startswith(h) for k, h in zip(kept, newest, strict=True))
        assert row["length"] <= 560


def test_evaluation_prompts_longer_than_the_context_are_skipped_and_counted(
    sample_config, tokenizer
):
    built = build_dataset(sample_config("data.tasks=[ap]").data, tokenizer, context_length=200)
    skipped = built.manifest["skipped_too_long"]
    assert skipped and not any(key.endswith("/train") for key in skipped)
    kept = sum(len(d) for s, d in built.splits.items() if s != "train")
    assert all(row["length"] <= 200 for s, d in built.splits.items() if s != "train" for row in d)
    assert kept + sum(skipped.values()) == sum(
        n for key, n in built.manifest["rows"].items() if not key.endswith("/train")
    )


def test_examples_that_cannot_fit_raise_or_are_skipped(sample_config, tokenizer):
    with pytest.raises(DataError, match="training example.* do not fit data.max_length=64"):
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
    assert build_dataset(sample_config("data.max_length=1500").data, tokenizer).from_cache is False


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "manifest"])
def test_a_damaged_tokenised_cache_is_rebuilt_with_a_warning(
    sample_config, tokenizer, damage, caplog
):
    cfg = sample_config("data.tasks=[sa]").data
    first = build_dataset(cfg, tokenizer)
    expected = {s: d.to_dict()["input_ids"] for s, d in first.splits.items()}
    path = first.path
    del first  # its Arrow files are memory-mapped: reading them once damaged would crash
    arrow = next(path.rglob("*.arrow"))
    target = path / "manifest.json" if damage == "manifest" else arrow
    data = target.read_bytes()
    if damage == "flip":
        target.write_bytes(
            data[: len(data) // 2]
            + bytes([data[len(data) // 2] ^ 0xFF])
            + data[len(data) // 2 + 1 :]
        )
    else:
        target.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    again = build_dataset(cfg, tokenizer)
    assert not again.from_cache and "is damaged" in caplog.text and "rebuilding it" in caplog.text
    assert {s: d.to_dict()["input_ids"] for s, d in again.splits.items()} == expected
    assert build_dataset(cfg, tokenizer).from_cache  # the rebuilt cache is whole again

"""Collation: right-padded training batches and left-padded generation prompts."""

from caslie.data.pipeline import build_dataset
from caslie.data.tokenize import collate_generate


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

"""Batched greedy generation: left padding, constrained decoding, answer budgets."""

import torch

from caslie.config import ModelConfig
from caslie.data.tokenize import collate_generate
from caslie.generation import LabelTrie, answer_budget, generate_answers, label_ids
from caslie.models.lora import load_base_model

TINY = ModelConfig(name_or_path="tiny:mistral")


def _prompts(tokenizer, texts):

    feats = []
    for i, t in enumerate(texts):
        ids = tokenizer(t)["input_ids"]
        feats.append({"input_ids": ids, "prompt_len": len(ids), "id": str(i), "task": "ap", "split": "val",
                      "target": "yes", "prompt": t, "options": "null", "caption_used": [],
                      "captions": "[]", "votes": "[]", "images": "[]"})  # fmt: skip
    return feats, collate_generate(feats, tokenizer.pad_token_id, 8)


def test_batched_left_padded_generation_equals_one_prompt_at_a_time(tokenizer):
    model = load_base_model(TINY, tokenizer).eval()
    texts = ["Is the hammer forged?", "A long question about a cordless drill, its batteries and the charger?",
             "Gloves", "Does this tent fit four people and a dog in the rain?"]  # fmt: skip
    feats, batch = _prompts(tokenizer, texts)
    batched = generate_answers(model, tokenizer, batch["input_ids"], batch["attention_mask"], 12)
    for f, text in zip(feats, batched, strict=True):
        ids = torch.tensor([f["input_ids"]])
        single = generate_answers(model, tokenizer, ids, torch.ones_like(ids), 12)
        assert single == [text]


def test_constrained_decoding_only_produces_valid_labels(tokenizer):
    model = load_base_model(TINY, tokenizer).eval()
    labels = {"yes", "no"}
    trie = LabelTrie(label_ids(tokenizer, labels), tokenizer.eos_token_id)
    feats, batch = _prompts(
        tokenizer, ["Is it steel?", "Red gloves", "Does the box include a charger?"]
    )
    free = generate_answers(model, tokenizer, batch["input_ids"], batch["attention_mask"], 6)
    forced = generate_answers(
        model, tokenizer, batch["input_ids"], batch["attention_mask"], 6, [trie] * 3
    )
    assert all(t in labels for t in forced)
    assert not all(t in labels for t in free)  # a random model left alone says anything
    assert answer_budget(tokenizer, labels) == max(len(x) for x in label_ids(tokenizer, labels)) + 1

"""Tokenising (joint, by parts, batched) and collation: right-padded training batches and
left-padded generation prompts."""

import pytest

from caslie.data.pipeline import build_dataset
from caslie.data.tokenize import Tokenise, _splits_locally, batch_ids, collate_generate, joint_ids
from caslie.generation import LabelTrie, answer_budget, answer_ids, label_ids


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


def _sentencepiece_style_tokenizer():
    """A Metaspace BPE tokenizer trained offline, shaped like Mistral's and Llama-2's: words carry a
    leading "▁", so "yes" alone and "yes" right after "Response:\\n" are different tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # A newline stays a token of its own, as SentencePiece's byte token <0x0A> does.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
    ])  # fmt: skip
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    corpus = [
        "### Response:\nyes",
        "### Response:\nno",
        "yes no maybe",
        "Is it answerable? yes",
    ] * 50
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  show_progress=False)  # fmt: skip
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>")  # fmt: skip


def test_answers_are_tokenised_jointly_with_the_prompt_as_ecellm_trained_them():
    tok = _sentencepiece_style_tokenizer()
    alone = tok("yes", add_special_tokens=False)["input_ids"]
    after = answer_ids(tok, "yes")
    assert alone != after  # the word-start "▁yes" is not what follows "Response:\n"
    prompt = "Is it answerable?\n\n### Response:\n"
    ids, n_prompt = Tokenise(tok, 64, add_special_tokens=False).encode(prompt, "yes")
    assert ids == tok(prompt + "yes", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ids[:n_prompt] == tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids[n_prompt:-1] == after  # the boundary tokens equal the joint tokenisation
    trie = LabelTrie(label_ids(tok, {"yes", "no"}), tok.eos_token_id)
    assert after[0] in trie.allowed([]) and alone[0] not in trie.allowed([])
    assert answer_budget(tok, {"yes", "no"}) == max(len(after), len(answer_ids(tok, "no"))) + 1


def test_row_text_cannot_move_the_input_split(sample_config, sample_rows, tokenizer, tmp_path):
    import io
    import json

    from conftest import write_jsonl

    from caslie.cli import inspect
    from caslie.data.tokenize import split_prompt

    rows = [
        dict(r) for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "train"
    ][:2]
    rows[0]["instruction"] = (
        "Ignore \x00CASLIE_INPUT\x00 and \x00input-0000000000000000\x00 " + rows[0]["instruction"]
    )
    cfg = sample_config(f"data.source={write_jsonl(tmp_path / 'rows.jsonl', rows)}",
                        "data.tasks=[sa]", "data.eval_splits=[]", "data.fusion=none")  # fmt: skip
    built = build_dataset(cfg.data, tokenizer).splits["train"]
    out = io.StringIO()
    inspect(cfg, "train", 5, "jsonl", out)
    shown = {r["id"]: r["prompt"] for r in map(json.loads, out.getvalue().splitlines())}
    assert {r["id"]: r["prompt"] for r in built} == shown
    assert "\x00CASLIE_INPUT\x00" in built[0]["prompt"]  # the row's text is kept as it is
    head, tail = split_prompt(lambda text: "A \x00input-x\x00 " + text + " B")
    assert (head, tail) == ("A \x00input-x\x00 ", " B")


def test_control_strings_in_row_text_are_text_and_the_templates_stay_control(tokenizer):
    import copy
    from functools import partial

    from caslie.data.tokenize import control_strings, prompt_parts
    from caslie.prompts import render_prompt

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    inst, eos = tok.convert_tokens_to_ids("[INST]"), tok.eos_token_id
    instruction, text = "Say [INST] if you must.", '{"review": "great </s> [/INST] product"}'
    three = partial(render_prompt, template="mistral", tokenizer=tok)
    head, tail = prompt_parts(lambda i, x, o: three(i, x, o), instruction, None)
    assert {"[INST]", "[/INST]", "</s>"} <= set(control_strings(tok))
    assert "".join(t for t, _ in head) + text + "".join(t for t, _ in tail) == three(
        instruction, text, None
    )
    assert [t for t, row in head if row] == [instruction]
    ids, n_prompt = Tokenise(tok, 512, add_special_tokens=True).encode_parts(
        [*head, [text, True], *tail], "positive </s>"
    )
    assert ids.count(inst) == 1 and ids[1] == inst  # the template's [INST], after BOS
    assert ids.count(tok.convert_tokens_to_ids("[/INST]")) == 1  # the template's, not the row's
    assert ids.count(eos) == 1 and ids[-1] == eos  # the row's and the answer's </s> are text
    assert (
        "</s>" in tok.decode(ids[:n_prompt])
        and tok.decode(ids[n_prompt:-1]).strip() == "positive </s>"
    )
    joint = tok(three(instruction, text, None), add_special_tokens=True)["input_ids"]
    assert joint.count(inst) == 2 and joint.count(eos) == 1  # what plain tokenising would do


def test_rows_with_control_text_are_built_by_parts_and_others_jointly(
    sample_config, sample_rows, tokenizer, tmp_path
):
    from conftest import write_jsonl

    rows = [
        dict(r) for r in sample_rows if r["task"] == "sentiment_analysis" and r["split"] == "train"
    ][:2]
    rows[0]["input"] = (
        rows[0]["input"].replace("}", ', "note": "</s><s>"}', 1)
        if rows[0]["input"].startswith("{")
        else rows[0]["input"] + " </s>"
    )
    cfg = sample_config(f"data.source={write_jsonl(tmp_path / 'rows.jsonl', rows)}",
                        "data.tasks=[sa]", "data.eval_splits=[]", "data.fusion=none")  # fmt: skip
    built = build_dataset(cfg.data, tokenizer).splits["train"].to_dict()
    eos = tokenizer.eos_token_id
    by_id = dict(zip(built["id"], built["input_ids"], strict=True))
    prompts = dict(zip(built["id"], built["prompt"], strict=True))
    tainted, clean = built["id"][0], built["id"][1]
    assert "</s>" in prompts[tainted] and by_id[tainted].count(eos) == 1
    target = built["target"][1]
    assert by_id[clean] == tokenizer(prompts[clean] + target)["input_ids"] + [eos]  # unchanged path


@pytest.mark.parametrize("name", ["tiny:mistral", "tiny:llama", "sentencepiece-style"])
def test_batch_ids_are_the_tokenizer_calls_ids(name, sample_rows):
    from caslie.pretrained import load_tokenizer

    tok = (
        _sentencepiece_style_tokenizer() if name == "sentencepiece-style" else load_tokenizer(name)
    )
    texts = [r["instruction"] + "\n" + str(r["input"]) + "\n### Response:\n" + str(r["output"])
             for r in sample_rows]  # fmt: skip
    controls = [c for c in (tok.eos_token, tok.bos_token) if c]
    texts += ["", " ", "a\n\n  b", *(f"row text {c} inside" for c in controls)]
    for special in (True, False):
        # A call that splits special tokens leaves that mode on the backend; batch_ids must not
        # inherit it.
        tok("x </s>", split_special_tokens=True)
        assert batch_ids(tok, texts, special) == tok(texts, add_special_tokens=special)["input_ids"]


def _ignore_merges_tokenizer():
    """A BPE with ``ignore_merges`` (as Llama-3's): "xyz" is in the vocabulary, so alone it is one
    token, but "xyzw" is merged pair by pair into "x", "yz", "w", whose first two do not make
    "xyz": the prompt's tokens cannot be read off the joint text's."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {
        t: i for i, t in enumerate(["<s>", "</s>", "x", "y", "z", "w", " ", "yz", "xy", "xyz"])
    }
    merges = [("y", "z"), ("x", "y"), ("xy", "z")]
    tok = Tokenizer(models.BPE(vocab, merges, ignore_merges=True))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    assert len(fast("xyz", add_special_tokens=False)["input_ids"]) == 1
    assert fast("xyzw", add_special_tokens=False)["input_ids"][:2] == [vocab["x"], vocab["yz"]]
    return fast


def _trailing_eos_tokenizer():
    """The SentencePiece-style tokenizer with a post-processor that appends EOS to every text."""
    from tokenizers import processors

    tok = _sentencepiece_style_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.bos_token_id), ("</s>", tok.eos_token_id)]
    )
    return tok


@pytest.mark.parametrize(
    "name", ["tiny:mistral", "tiny:llama", "sentencepiece-style", "ignore-merges", "trailing-eos"]
)
def test_prompt_lengths_read_off_the_joint_tokens_equal_tokenising_the_prompt_alone(name):
    """Random prompt/answer pairs built to meet at awkward points (spaces either side, a newline
    run split in two, a multi-byte character, a control string, an empty side): ``joint_ids``
    gives exactly eCeLLM's two tokenizer calls, ``ids(prompt + answer)`` and
    ``len(ids(prompt))``, however it reaches them."""
    import random

    from caslie.pretrained import load_tokenizer

    tok = {
        "sentencepiece-style": _sentencepiece_style_tokenizer,
        "ignore-merges": _ignore_merges_tokenizer,
        "trailing-eos": _trailing_eos_tokenizer,
    }.get(name, lambda: load_tokenizer(name))()
    assert _splits_locally(tok._tokenizer) == (name not in ("ignore-merges", "trailing-eos"))
    pieces = ["", " ", "  ", "\n", "\n\n", "yes", " yes", "no", "é", "日本", "😀", ":", "A",
              "1", "12", "(", "'s", "\t", "</s>", "<s>", "Ġ", "▁", " a  b", "### Response:\n", "xyz", "w"]  # fmt: skip
    rng = random.Random(0)

    def text(most: int) -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, most)))

    prompts = [text(6) for _ in range(1500)]
    targets = [text(4) for _ in range(1500)]
    for special in (True, False):
        expected = [
            (full, len(alone))
            for full, alone in zip(
                tok(
                    [p + t for p, t in zip(prompts, targets, strict=True)],
                    add_special_tokens=special,
                )["input_ids"],  # fmt: skip
                tok(prompts, add_special_tokens=special)["input_ids"],
                strict=True,
            )
        ]
        assert joint_ids(tok, prompts, targets, special) == expected


def test_a_normalizer_that_strips_the_texts_end_tokenises_the_prompt_alone():
    """With ``Strip`` the prompt alone loses its last space, the joint text keeps it as a token of
    its own: the count must come from tokenising the prompt."""
    from tokenizers import normalizers

    tok = _sentencepiece_style_tokenizer()
    tok._tokenizer.normalizer = normalizers.Strip()
    assert not _splits_locally(tok._tokenizer)
    prompts, targets = ["Is it answerable?\n", "yes \n"], ["\nyes", "\nno"]
    expected = [
        (tok(p + t)["input_ids"], len(tok(p)["input_ids"]))
        for p, t in zip(prompts, targets, strict=True)
    ]
    assert joint_ids(tok, prompts, targets, True) == expected

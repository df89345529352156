"""Every prompt: the paper's "mistral" prompt byte for byte for every task, chat templates, CQE."""

import json

import pytest
from conftest import GOLDEN_CASES, HEAD, REPO, SPLIT_MAP, cqe_config

from caslie.config import load_config
from caslie.data.fusion import fuse_text
from caslie.data.records import parse_row
from caslie.jobs import select_records
from caslie.prompts import cqe_prompt, render_prompt
from caslie.tasks import TASKS


@pytest.mark.parametrize("task", list(GOLDEN_CASES))
def test_mistral_prompt_is_byte_exact_with_uia_fusion(task):
    raw, fused_input, fused_options = GOLDEN_CASES[task]
    record = parse_row(raw, "golden", SPLIT_MAP)
    n = len(record.images)
    input_text, options_text = fuse_text(record, record.captions, [True] * n)
    assert input_text == fused_input
    assert options_text == fused_options
    prompt = render_prompt(record.instruction, input_text, options_text)
    expected = HEAD + TASKS[task].instruction + "\n\n### Input:\n" + fused_input + "\n\n"
    if fused_options is not None:
        expected += "### Options:\n" + fused_options + "\n\n"
    expected += " [/INST] ### Response:\n"
    assert prompt == expected


def test_empty_options_keep_the_options_block_and_absent_ones_drop_it():
    with_empty = render_prompt("I", "{}", "[]")
    assert "### Options:\n[]\n\n [/INST]" in with_empty
    without = render_prompt("I", "{}", None)
    assert "### Options" not in without
    assert without.endswith("### Input:\n{}\n\n [/INST] ### Response:\n")


def test_chat_template_option(tokenizer):
    prompt = render_prompt("Do it.", '{"a": 1}', '["A: x"]', template="chat", tokenizer=tokenizer)
    assert prompt.startswith("<s>[INST] Below is an instruction")
    assert prompt.endswith('### Options:\n["A: x"] [/INST]')
    with pytest.raises(ValueError, match="chat template"):
        render_prompt("I", "{}", None, template="chat", tokenizer=None)


def test_templates_are_str_format_safe():
    prompt = render_prompt("use {braces}", '{"k": "{input}"}', '["{options}"]')
    assert "use {braces}" in prompt and '{"k": "{input}"}' in prompt and '["{options}"]' in prompt


def test_prompt_is_appendix_c_with_the_caption(tmp_path):
    cfg = cqe_config(tmp_path)
    records = select_records(cfg, ["prp"], ["train"], 1)
    r = records[0]
    text = cqe_prompt(r, 1, "A red box")
    assert (
        f"title of product 1: {r.input['product 2']}, and product 2: {r.input['product 1']}" in text
    )
    assert "image: A red box, you need" in text and text.endswith("Only output yes or no.")


def _reference_pred_prompt(row: dict) -> list[str]:
    """A transcription of the published template.py:pred_prompt strings (the caption_info path)."""
    inp, caps = json.loads(row["input"]), json.loads(row["caption_info"])
    task = row["task"]
    if task == "multiclass_product_classification":
        return [
            f"The model needs to predict the relevance between the query and product by analyzing the user's query: '{inp['query']}', and product title: '{inp['product title']}'. Here is the additional information about the product extracted from product image: '{caps[0]}', you need to determine if the information extracted from the image will be helpful in predicting the relevance result. Only output yes or no."
        ]
    if task == "product_substitute_identification":
        return [
            f"The model needs to identify if the product is somewhat relevant to the query but fails to fulfill some aspects of the query but the product can be used as a functional substitute. Given a user's query: '{inp['query']}' and a product title: '{inp['product title']}', as well as additional information about the product extracted from the product image: '{caps[0]}', you need to determine if the information extracted from the image will be helpful in identifying the relevance between the product and the query. Only output yes or no."
        ]
    if task == "sentiment_analysis":
        return [
            f"The task needs to identify the user's sentiment based on their review: '{inp['review']}'. Here is the additional information about the product extracted from the user review's image: '{caps[0]}'. You need to determine if the information extracted from the image will help to identify the user's sentiment. Only output yes or no."
        ]
    if task == "answerability_prediction":
        return [
            "The task needs to identify if the question: '{}', is answerable based on the related document. Here is the additional information about the product that extracted from the product image: '{}'. You need to determine if the information extracted from the image will help to identify the question's answerability. Only output yes or no.".format(
                inp["question"], caps[0]
            )
        ]
    if task == "category_classification":
        return [
            "The task needs to identify the product's fine-grained category. Here is the product title : '{}', and additional information about the product that extracted from the product image: '{}'. You need to determine if the information extracted from the image will help to identify the category. Only output yes or no.".format(
                inp["title"], caps[0]
            )
        ]
    if task == "sequential_recommendation":
        text = "The task needs to recommend the next product that the user may be interested in based on the user's purchase history. Here is the title of a product from purchase history: '{}', and the information extracted from the product image: {}. You need to determine if the information extracted from the image will be helpful for recommendation. Only output yes or no."
        ops = json.loads(row["options"])
        return [text.format(inp[i].split(": ", 1)[-1], caps[i]) for i in range(len(inp))] + [
            text.format(ops[i].split(": ", 1)[-1], caps[i + len(inp)]) for i in range(len(ops))
        ]
    both = "The model needs to identify if the two products are similar or will be purchased together or be viewed together given the title of the product 1: '{}', and the product 2: '{}'. Here is the additional information about the product {} extracted from its image: '{}', you need to determine if the information extracted from the image will be helpful in identifying the relation between the two products. Only output yes or no."
    return [both.format(inp["product 1"], inp["product 2"], n + 1, caps[n]) for n in range(2)]


def test_reference_cqe_prompts_equal_the_published_code_on_every_sample_row(sample_rows):
    checked = 0
    for row in sample_rows:
        record = parse_row(row, "sample", SPLIT_MAP)
        expected = _reference_pred_prompt(row)
        assert len(expected) == len(record.images)
        for j, caption in enumerate(record.captions):
            assert cqe_prompt(record, j, caption, "reference") == expected[j], (record.id, j)
            checked += 1
    assert checked > 354  # every image of every row, every task


def test_options_that_read_null_render_as_the_reference_renders_them():
    raw = dict(GOLDEN_CASES["psi"][0], options="null")
    record = parse_row(raw, "golden", SPLIT_MAP)
    assert record.options is None and record.labels() == ("yes", "no")
    prompt = render_prompt(record.instruction, *fuse_text(record, record.captions, [True]))
    assert prompt.endswith("\n\n### Options:\nnull\n\n [/INST] ### Response:\n")
    absent = parse_row(dict(raw, options=None), "golden", SPLIT_MAP)
    assert "### Options:" not in render_prompt(
        absent.instruction, *fuse_text(absent, absent.captions, [True])
    )


def test_alpaca_template_is_ecellms_for_llama2():
    with_options = render_prompt("Do it.", '{"a": 1}', '["A: x"]', template="alpaca")
    assert with_options == (
        "Below is an instruction that describes a task, paired with an input that provides further "
        "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
        'Do it.\n\n### Input:\n{"a": 1}\n\n### Options:\n["A: x"]\n\n### Response:\n'
    )
    assert render_prompt("Do it.", "{}", None, template="alpaca").endswith(
        "### Input:\n{}\n\n### Response:\n"
    )
    assert load_config(REPO / "configs/llama2_13b_mv.yaml").data.prompt_template == "alpaca"

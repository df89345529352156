"""Every prompt: the paper's "mistral" prompt byte for byte for every task, chat templates, CQE."""

import pytest
from conftest import GOLDEN_CASES, HEAD, SPLIT_MAP, cqe_config

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

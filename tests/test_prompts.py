"""Golden tests: the paper's "mistral" prompt, byte for byte, for every task."""

import json

import pytest

from caslie.config import load_config
from caslie.data.records import parse_row
from caslie.fusion import fuse_text, text_only
from caslie.prompts import render_prompt
from caslie.tasks import TASKS

HEAD = (
    "[INST] Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n"
)
SPLIT_MAP = load_config().data.split_map


def _row(task: str, inp, options, output: str, n_images: int) -> dict:
    return {
        "task": TASKS[task].name, "split": "test", "instruction": TASKS[task].instruction,
        "input": json.dumps(inp), "options": None if options is None else json.dumps(options),
        "output": output, "images": json.dumps([f"i{j}.png" for j in range(n_images)]),
        "caption_info": json.dumps([f"cap {j} \u00e9" for j in range(n_images)]),
    }  # fmt: skip


CASES = {
    "ap": (
        _row("ap", {"question": "Is it 20V?", "document": "20V MAX"}, [], "yes", 1),
        '{"question": "Is it 20V?", "document": "20V MAX", "product information extracted from image": "cap 0 \\u00e9"}',
        "[]",
    ),
    "cc": (
        _row("cc", {"title": "Saw"}, ["A: Saws", "B: Drills"], "A", 1),
        '{"title": "Saw", "product information extracted from image": "cap 0 \\u00e9"}',
        '["A: Saws", "B: Drills"]',
    ),
    "prp": (
        _row(
            "prp",
            {"product 1": "Drill", "product 2": "Bits"},
            ["A: buy", "B: view", "C: similar"],
            "B",
            2,
        ),
        '{"product 1": "Drill", "product 2": "Bits", "product 1 information extracted from image": '
        '"cap 0 \\u00e9", "product 2 information extracted from image": "cap 1 \\u00e9"}',
        '["A: buy", "B: view", "C: similar"]',
    ),
    "psi": (
        _row("psi", {"query": "q", "product title": "t"}, None, "no", 1),
        '{"query": "q", "product title": "t", "product information extracted from image": "cap 0 \\u00e9"}',
        None,
    ),
    "mpc": (
        _row("mpc", {"query": "q", "product title": "t"}, ["A: E", "B: S", "C: C", "D: I"], "D", 1),
        '{"query": "q", "product title": "t", "product information extracted from image": "cap 0 \\u00e9"}',
        '["A: E", "B: S", "C: C", "D: I"]',
    ),
    "sa": (
        _row("sa", {"review": 'Great "tool"'}, ["A: very positive", "B: positive"], "A", 1),
        '{"review": "Great \\"tool\\"", "product information extracted from image": "cap 0 \\u00e9"}',
        '["A: very positive", "B: positive"]',
    ),
    "sr": (
        _row("sr", ["1st: Drill", "2nd: Saw"], ["A: Bits", "B: Blade"], "B", 4),
        '["1st: Drill cap 0 \\u00e9", "2nd: Saw cap 1 \\u00e9"]',
        '["A: Bits cap 2 \\u00e9", "B: Blade cap 3 \\u00e9"]',
    ),
}


@pytest.mark.parametrize("task", list(CASES))
def test_mistral_prompt_is_byte_exact_with_uia_fusion(task):
    raw, fused_input, fused_options = CASES[task]
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


@pytest.mark.parametrize("task", list(CASES))
def test_rejected_captions_become_null_or_are_left_out(task):
    raw, _, _ = CASES[task]
    record = parse_row(raw, "golden", SPLIT_MAP)
    n = len(record.images)
    input_text, options_text = fuse_text(record, record.captions, [False] * n)
    if task == "sr":  # sr items are left as they were
        assert input_text == json.dumps(record.input)
        assert options_text == json.dumps(list(record.options))
    else:
        parsed = json.loads(input_text)
        keys = [k for k in parsed if "extracted from image" in k]
        assert keys and all(parsed[k] is None for k in keys)
        assert input_text.endswith(": null}")


def test_text_only_reserialises_with_python_defaults():
    raw = _row("sa", {"review": "caf\u00e9,  spaced"}, ["A: x"], "A", 1)
    raw["input"] = '{"review":"caf\u00e9,  spaced"}'  # compact, unescaped in the source
    record = parse_row(raw, "golden", SPLIT_MAP)
    assert text_only(record) == ('{"review": "caf\\u00e9,  spaced"}', '["A: x"]')


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

"""Prompt rendering: the paper's "mistral" template (byte-exact), or the tokenizer's chat template.

The paper's template comes in two forms; the one without ``### Options`` is used only when a row has
no options at all (field absent or null), so an empty list still renders ``[]``.
"""

from __future__ import annotations

from typing import Any

_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
)
_BODY_WITH_OPTIONS = (
    _PREAMBLE + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Options:\n{options}"
)
_BODY_NO_OPTIONS = _PREAMBLE + "### Instruction:\n{instruction}\n\n### Input:\n{input}"

MISTRAL_WITH_OPTIONS = "[INST] " + _BODY_WITH_OPTIONS + "\n\n [/INST] ### Response:\n"
MISTRAL_NO_OPTIONS = "[INST] " + _BODY_NO_OPTIONS + "\n\n [/INST] ### Response:\n"

TEMPLATES = ("mistral", "chat")


def render_body(instruction: str, input_text: str, options_text: str | None) -> str:
    """The instruction/input/options text shared by both templates (no model markers)."""
    if options_text is None:
        return _BODY_NO_OPTIONS.format(instruction=instruction, input=input_text)
    return _BODY_WITH_OPTIONS.format(
        instruction=instruction, input=input_text, options=options_text
    )


def render_prompt(
    instruction: str,
    input_text: str,
    options_text: str | None,
    template: str = "mistral",
    tokenizer: Any = None,
) -> str:
    """Render the prompt a model sees before its answer.

    Args:
        instruction: The row's instruction.
        input_text: ``json.dumps`` of the (fused) input.
        options_text: ``json.dumps`` of the (fused) options, or ``None`` for rows without options.
        template: ``mistral`` (the paper's) or ``chat`` (``tokenizer.apply_chat_template``).
        tokenizer: Needed for ``chat``.

    Returns:
        The prompt text, ending where the answer starts.
    """
    if template == "mistral":
        if options_text is None:
            return MISTRAL_NO_OPTIONS.format(instruction=instruction, input=input_text)
        return MISTRAL_WITH_OPTIONS.format(
            instruction=instruction, input=input_text, options=options_text
        )
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "data.prompt_template=chat needs a tokenizer with a chat template; this tokenizer "
                "has none (use data.prompt_template=mistral)"
            )
        body = render_body(instruction, input_text, options_text)
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
    raise ValueError(f"unknown prompt template '{template}' (use one of {', '.join(TEMPLATES)})")


def template_adds_bos(template: str) -> bool:
    """Whether tokenising the prompt should add the tokenizer's special tokens (BOS).

    Chat templates already write BOS into the text; the paper's template relies on the tokenizer.
    """
    return template == "mistral"

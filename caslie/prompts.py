"""Every prompt the project writes: the task prompt a model answers, and the EC3 and CQE instructions.

The task prompt is the paper's "mistral" template (byte-exact), or the tokenizer's chat template.
The paper's template comes in two forms; the one without ``### Options`` is used only when a row has
no options at all (field absent or null), so an empty list still renders ``[]``.

EC3 (captioning) and CQE (caption quality) instructions fill the task's Appendix C templates
(:mod:`caslie.tasks`) with the context of one image slot: one slot per image, in ``images`` order.
PRP has two products, each captioned with the other's title; SR has every history item, then every
option, each with its own item text.
"""

from __future__ import annotations

import string
from typing import Any

from caslie.errors import ConfigError
from caslie.record import Record
from caslie.tasks import TASKS

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

# eCeLLM's templates/alpaca.json, which trained its Llama-2 models.
ALPACA_WITH_OPTIONS = _BODY_WITH_OPTIONS + "\n\n### Response:\n"
ALPACA_NO_OPTIONS = _BODY_NO_OPTIONS + "\n\n### Response:\n"

TEMPLATES = ("mistral", "alpaca", "chat")

CONTEXT_FREE_PROMPT = "Please generate an informative caption for the product in the image."
"""The EC3 instruction without any context (the paper's BLIP-2-style baseline)."""

# ------------------------------------------------------------------------------------ task prompt


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
        template: ``mistral`` (the paper's), ``alpaca`` (eCeLLM's, for Llama-2) or ``chat``
            (``tokenizer.apply_chat_template``).
        tokenizer: Needed for ``chat``.

    Returns:
        The prompt text, ending where the answer starts.

    Raises:
        ConfigError: ``chat`` with a tokenizer that has no chat template, or an unknown template.
    """
    if template in ("mistral", "alpaca"):
        with_options, no_options = (
            (MISTRAL_WITH_OPTIONS, MISTRAL_NO_OPTIONS)
            if template == "mistral"
            else (ALPACA_WITH_OPTIONS, ALPACA_NO_OPTIONS)
        )
        if options_text is None:
            return no_options.format(instruction=instruction, input=input_text)
        return with_options.format(instruction=instruction, input=input_text, options=options_text)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ConfigError(
                "data.prompt_template=chat needs a tokenizer with a chat template; this tokenizer "
                "has none (use data.prompt_template=mistral)"
            )
        body = render_body(instruction, input_text, options_text)
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
    raise ConfigError(f"unknown prompt template '{template}' (use one of {', '.join(TEMPLATES)})")


def template_adds_bos(template: str) -> bool:
    """Whether tokenising the prompt should add the tokenizer's special tokens (BOS).

    Chat templates already write BOS into the text; the paper's templates rely on the tokenizer.
    """
    return template in ("mistral", "alpaca")


# ----------------------------------------------------------------------------- image slot context


def item_text(entry: str) -> str:
    """``"1st: Title. Category. Brand."`` or ``"A: Title"`` -> the item text."""
    head, sep, rest = entry.partition(": ")
    return rest.strip() if sep and len(head) <= 5 else entry.strip()


def slot_contexts(record: Record) -> list[dict[str, str]]:
    """Template values for each image slot of ``record``.

    Keys: ``title``, ``other_title``, ``question``, ``document``, ``query``, ``review`` and
    ``options`` (as the task has them).
    """
    inp: Any = record.input
    options = ", ".join(record.options or [])
    task = record.task
    if task == "sr":
        items = [item_text(x) for x in inp] + [item_text(x) for x in record.options or []]
        return [{"title": t} for t in items]
    if task == "prp":
        p1, p2 = str(inp.get("product 1", "")), str(inp.get("product 2", ""))
        return [{"title": p1, "other_title": p2}, {"title": p2, "other_title": p1}]
    ctx = {
        "ap": lambda: {"question": inp.get("question", ""), "document": inp.get("document", "")},
        "cc": lambda: {"title": inp.get("title", ""), "options": options},
        "psi": lambda: {"query": inp.get("query", ""), "title": inp.get("product title", "")},
        "mpc": lambda: {"query": inp.get("query", ""), "title": inp.get("product title", "")},
        "sa": lambda: {"review": inp.get("review", "")},
    }[task]()
    return [{k: str(v) for k, v in ctx.items()}] * len(record.images)


def fill(template: str, values: dict[str, str]) -> str:
    """Format ``template`` with ``values``; a placeholder without a value names the field."""
    names = {f for _, f, _, _ in string.Formatter().parse(template) if f}
    missing = names - set(values)
    if missing:
        raise KeyError(f"template needs {sorted(missing)}, the row gives {sorted(values)}")
    return template.format(**values)


# ------------------------------------------------------------------------ EC3 and CQE instructions


def caption_instruction(
    record: Record,
    index: int,
    context: bool = True,
    length_instruction: str = "",
    prompt_set: str = "paper",
    backend: str | None = None,
) -> str:
    """The EC3 captioning instruction for one image slot.

    Args:
        record: The row.
        index: The image slot.
        context: Context-conditioned (the task's template) or :data:`CONTEXT_FREE_PROMPT`.
        length_instruction: Appended after a space (empty: nothing); ``paper`` prompts only.
        prompt_set: ``reference`` (the published code's lead sentence for ``backend`` and its task
            sentence, byte for byte) or ``paper`` (Appendix C plus ``length_instruction``).
        backend: The captioner's model type (``mllama``, ``llava``, ``llava_next``...).
    """
    if prompt_set == "reference" and context:
        lead = REFERENCE_CAPTION_LEAD.get(backend or "", REFERENCE_CAPTION_LEAD["mllama"])
        return lead + REFERENCE_CAPTION[record.task].format(
            **_reference_caption_values(record, index)
        )
    base = (
        fill(TASKS[record.task].caption_template, slot_contexts(record)[index])
        if context
        else CONTEXT_FREE_PROMPT
    )
    return f"{base} {length_instruction}".strip()


# The captioning prompts of the published code, byte for byte: a lead sentence per backend, then the
# task sentence (its quirks included: PSI's query and title swapped, SR's "profuct").
REFERENCE_CAPTION_LEAD = {
    "mllama": "Please generate a concise and informative caption for the product in the image within 50 words. ",
    "llava_next": "Please generate a concise and informative caption for the product in the image. ",
    "llava": "Please generate an informative caption for the product in the image. ",
}  # fmt: skip
REFERENCE_CAPTION = {
    "ap": "The caption should be helpful to identify if the product-related question: {question}, is answerable.",
    "cc": "The caption should be helpful to identify the product's fine-grained category. Here is the product title: {title}.",
    "prp": "The title of the product in the image is '{title}'. The caption should be helpful to predict the relation between this product and the other product '{other_title}'.",
    "psi": "The caption should be helpful to predict if the product: '{query}' can serve as a functional substitute for the user's query: '{title}'.",
    "mpc": "The caption should be helpful to predict the relevance between the user's query: '{query}', and product: '{title}'.",
    "sa": "The caption should be helpful to identify the user's sentiment from the review: {review}.",
    "sr": "The caption should be helpful to recommend the next product the user is most likely to purchase by analyzing the user's intent based on the user's purchase history. Here is the title of the profuct in the image: {title}.",
}  # fmt: skip


def _reference_caption_values(record: Record, index: int) -> dict[str, str]:
    inp: Any = record.input
    if record.task == "sr":
        items = list(inp) + list(record.options or [])
        return {"title": items[index].split(": ", 1)[-1]}
    if record.task == "prp":
        titles = [str(inp.get("product 1", "")), str(inp.get("product 2", ""))]
        return {"title": titles[index], "other_title": titles[1 - index]}
    keys = {"ap": {"question": "question"}, "cc": {"title": "title"},
            "psi": {"query": "query", "title": "product title"},
            "mpc": {"query": "query", "title": "product title"}, "sa": {"review": "review"}}[record.task]  # fmt: skip
    return {name: str(inp.get(key, "")) for name, key in keys.items()}


def cqe_prompt(record: Record, index: int, caption: str, prompt_set: str = "paper") -> str:
    """The caption-quality instruction for one image slot and its caption.

    Args:
        record: The row.
        index: The image slot.
        caption: The caption judged.
        prompt_set: ``reference`` (the published code's text, byte for byte, that the released
            votes were made with) or ``paper`` (the Appendix C wording).
    """
    if prompt_set == "reference":
        return REFERENCE_CQE[record.task].format(**reference_cqe_values(record, index, caption))
    return fill(
        TASKS[record.task].cqe_template, slot_contexts(record)[index] | {"caption": caption}
    )


# The CQE prompts of the published code, byte for byte (its quirks included: "that extracted",
# "product title : ", "from product image", history and options alike "from purchase history").
REFERENCE_CQE = {
    "ap": "The task needs to identify if the question: '{question}', is answerable based on the related document. Here is the additional information about the product that extracted from the product image: '{caption}'. You need to determine if the information extracted from the image will help to identify the question's answerability. Only output yes or no.",
    "cc": "The task needs to identify the product's fine-grained category. Here is the product title : '{title}', and additional information about the product that extracted from the product image: '{caption}'. You need to determine if the information extracted from the image will help to identify the category. Only output yes or no.",
    "prp": "The model needs to identify if the two products are similar or will be purchased together or be viewed together given the title of the product 1: '{product1}', and the product 2: '{product2}'. Here is the additional information about the product {n} extracted from its image: '{caption}', you need to determine if the information extracted from the image will be helpful in identifying the relation between the two products. Only output yes or no.",
    "psi": "The model needs to identify if the product is somewhat relevant to the query but fails to fulfill some aspects of the query but the product can be used as a functional substitute. Given a user's query: '{query}' and a product title: '{title}', as well as additional information about the product extracted from the product image: '{caption}', you need to determine if the information extracted from the image will be helpful in identifying the relevance between the product and the query. Only output yes or no.",
    "mpc": "The model needs to predict the relevance between the query and product by analyzing the user's query: '{query}', and product title: '{title}'. Here is the additional information about the product extracted from product image: '{caption}', you need to determine if the information extracted from the image will be helpful in predicting the relevance result. Only output yes or no.",
    "sa": "The task needs to identify the user's sentiment based on their review: '{review}'. Here is the additional information about the product extracted from the user review's image: '{caption}'. You need to determine if the information extracted from the image will help to identify the user's sentiment. Only output yes or no.",
    "sr": "The task needs to recommend the next product that the user may be interested in based on the user's purchase history. Here is the title of a product from purchase history: '{title}', and the information extracted from the product image: {caption}. You need to determine if the information extracted from the image will be helpful for recommendation. Only output yes or no.",
}  # fmt: skip

REFERENCE_SYSTEM = "You are a helpful AI assistant."
"""The system message the reference gives its text voters (its vision voter gets none)."""


def reference_cqe_values(record: Record, index: int, caption: str) -> dict[str, str]:
    """The values the reference fills its CQE prompt with, for one image slot.

    PRP keeps product 1 then product 2 in both prompts and names the product judged; SR takes each
    item's text after its first ``": "`` (history items first, then options).
    """
    inp: Any = record.input
    values = {"caption": caption}
    if record.task == "sr":
        items = list(inp) + list(record.options or [])
        return values | {"title": items[index].split(": ", 1)[-1]}
    if record.task == "prp":
        return values | {"product1": str(inp.get("product 1", "")),
                         "product2": str(inp.get("product 2", "")), "n": str(index + 1)}  # fmt: skip
    keys = {"ap": ("question",), "cc": ("title",), "psi": ("query", "product title"),
            "mpc": ("query", "product title"), "sa": ("review",)}[record.task]  # fmt: skip
    return values | {k.replace("product ", ""): str(inp.get(k, "")) for k in keys}

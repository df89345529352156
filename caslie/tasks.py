"""The seven MMECInstruct tasks: codes, dataset names, label handling, metrics and prompt templates.

The three templates per task come from Appendix C of the paper: the EC3 captioning instruction
(context-conditioned), the CQE caption-quality instruction, and the task instruction that becomes the
row's ``instruction``. Placeholders use ``str.format`` names (``{question}``, ``{caption}``...); the
paper's text lost its apostrophes in extraction ("users query"), so they are restored here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from caslie.errors import UnknownTaskError

# Metric families (Table 2 / Appendix D).
BINARY = "binary"  # ap, psi: positive class "yes"; acc, P, R, F1
MULTICLASS = "multiclass"  # mpc, prp, sa: acc and macro P/R/F1
CHOICE = "choice"  # cc, sr: R@1, the hit rate of the chosen option


@dataclass(frozen=True)
class Task:
    """One MMECInstruct task.

    Attributes:
        code: Short code used in configs and metric keys (``ap``).
        name: The dataset's ``task`` value (``answerability_prediction``).
        metric_kind: ``binary``, ``multiclass`` or ``choice``.
        primary: Name of the paper's primary metric (``f1``, ``acc``, ``macro_f1``, ``r1``).
        fixed_labels: The closed label set for tasks answered without options (``yes``/``no``),
            else ``None`` (labels are the option letters of each row).
        positive_label: Positive class for binary metrics.
        has_ood: Whether MMECInstruct ships an out-of-domain test set for the task.
        caption_template: EC3 captioning instruction (one per product image).
        cqe_template: CQE caption-quality instruction.
        instruction: The task instruction used as the row's ``instruction``.
    """

    code: str
    name: str
    metric_kind: str
    primary: str
    fixed_labels: tuple[str, ...] | None
    positive_label: str | None
    has_ood: bool
    caption_template: str
    cqe_template: str
    instruction: str

    def image_count(self, input_value: object, options: list[str] | None) -> int:
        """Number of product images a row of this task carries, in ``images`` order.

        Args:
            input_value: The parsed ``input`` field (a list of history items for sr, else a dict).
            options: The parsed ``options`` list, or ``None``.

        Returns:
            1 for single-product tasks, 2 for prp, history + options for sr.
        """
        if self.code == "sr":
            return len(input_value) + len(options or [])  # type: ignore[arg-type]
        if self.code == "prp":
            return 2
        return 1


_TASKS = [
    Task(
        code="ap",
        name="answerability_prediction",
        metric_kind=BINARY,
        primary="f1",
        fixed_labels=("yes", "no"),
        positive_label="yes",
        has_ood=True,
        caption_template=(
            "Please generate an informative caption for the product in the image. The caption "
            "should be helpful to identify if the product-related question: {question}, is "
            "answerable."
        ),
        cqe_template=(
            "The task needs to identify if the question is answerable based on the related "
            "document: {document}. Here is the additional information about the product that was "
            "extracted from the product image: {caption}. You need to determine if the information "
            "extracted from the image will help to identify the question's answerability. Only "
            "output yes or no."
        ),
        instruction=(
            "Analyze the question and its supporting document, as well as the potential extra "
            "information about the products extracted from the product images, predict if the "
            "question is answerable based on the provided information. Output only yes or no."
        ),
    ),
    Task(
        code="cc",
        name="category_classification",
        metric_kind=CHOICE,
        primary="r1",
        fixed_labels=None,
        positive_label=None,
        has_ood=True,
        caption_template=(
            "Please generate an informative caption for the product in the image. Here is the "
            "product title: {title}. The caption should be helpful in identifying the product's "
            "fine-grained category."
        ),
        cqe_template=(
            "The task needs to identify the product's fine-grained category from the options: "
            "{options}. Here is the additional information about the product that was extracted "
            "from the product image: {caption}. You need to determine if the information extracted "
            "from the image will help to identify the category. Only output yes or no."
        ),
        instruction=(
            "Analyze the product title, as well as the potential extra information about the "
            "products extracted from the product images, identify the product category from the "
            "given options. Only answer from the options."
        ),
    ),
    Task(
        code="prp",
        name="product_relation_prediction",
        metric_kind=MULTICLASS,
        primary="macro_f1",
        fixed_labels=None,
        positive_label=None,
        has_ood=True,
        caption_template=(
            "Please generate an informative caption for the product in the image. The title of "
            "the product in the image is {title}. The caption should be helpful in predicting the "
            "relation between this product and {other_title}."
        ),
        cqe_template=(
            "The model needs to identify if the two products are similar or will be purchased "
            "together or be viewed together given the title of product 1: {title}, and product 2: "
            "{other_title}. Here is the additional information about product 1 extracted from its "
            "image: {caption}, you need to determine if the information extracted from the image "
            "will be helpful in identifying the relation between the two products. Only output "
            "yes or no."
        ),
        instruction=(
            "Given the title of two products, as well as the potential extra information about "
            "the products extracted from the product images, predict the relation of the two "
            "products. Only answer from the options."
        ),
    ),
    Task(
        code="psi",
        name="product_substitute_identification",
        metric_kind=BINARY,
        primary="f1",
        fixed_labels=("yes", "no"),
        positive_label="yes",
        has_ood=False,
        caption_template=(
            "Please generate an informative caption for the product in the image. The caption "
            "should be helpful to predict if the product: {title} can serve as a functional "
            "substitute for the user's query: {query}."
        ),
        cqe_template=(
            "The model needs to identify if the product is somewhat relevant to the query but "
            "fails to fulfill some aspects of the query but the product can be used as a "
            "functional substitute. Given a user's query: {query} and a product title: {title}, "
            "as well as additional information about the product extracted from the product "
            "image: {caption}, you need to determine if the information extracted from the image "
            "will be helpful in identifying the relevance between the product and the query. Only "
            "output yes or no."
        ),
        instruction=(
            "Given a user's query and a product title, as well as the potential extra information "
            "about the product extracted from the product image, identify if the product is "
            "somewhat relevant to the query but fails to fulfill some aspects of the query but the "
            "product can be used as a functional substitute. Only output yes or no."
        ),
    ),
    Task(
        code="mpc",
        name="multiclass_product_classification",
        metric_kind=MULTICLASS,
        primary="acc",
        fixed_labels=None,
        positive_label=None,
        has_ood=False,
        caption_template=(
            "Please generate an informative caption for the product in the image. The caption "
            "should be helpful to predict the relevance between the user's query: {query}, and "
            "product: {title}."
        ),
        cqe_template=(
            "The model needs to predict the relevance between the query and product by analyzing "
            "the user's query: {query}, and product title: {title}. Here is the additional "
            "information about the product extracted from the product image: {caption}, you need "
            "to determine if the information extracted from the image will be helpful in "
            "predicting the result. Only output yes or no."
        ),
        instruction=(
            "Predict the relevance between the query and product by analyzing the user's query, "
            "and product title, as well as the potential extra information about the product "
            "extracted from the product image. Output the option that best describes the "
            "relevance."
        ),
    ),
    Task(
        code="sa",
        name="sentiment_analysis",
        metric_kind=MULTICLASS,
        primary="macro_f1",
        fixed_labels=None,
        positive_label=None,
        has_ood=True,
        caption_template=(
            "Please generate an informative caption for the product in the image. The caption "
            "should be helpful to identify the user's sentiment from the review: {review}."
        ),
        cqe_template=(
            "The task needs to identify the user's sentiment based on their review: {review}. "
            "Here is the additional information about the product extracted from the user "
            "review's image: {caption}. You need to determine if the information extracted from "
            "the image will help to identify the user's sentiment. Only output yes or no."
        ),
        instruction=(
            "Given the user's review, as well as the potential extra information about the "
            "products extracted from the user review's image, identify the user's sentiment. Only "
            "answer from the options."
        ),
    ),
    Task(
        code="sr",
        name="sequential_recommendation",
        metric_kind=CHOICE,
        primary="r1",
        fixed_labels=None,
        positive_label=None,
        has_ood=True,
        caption_template=(
            "Please generate an informative caption for the product in the image. Here is the "
            "product title: {title}. The caption should be helpful in predicting the next product "
            "the user is most likely to purchase by analyzing the user's intent based on the "
            "user's purchase history."
        ),
        cqe_template=(
            "The task needs to recommend the next product that the user may be interested in "
            "based on the user's purchase history. Here is the title of a product from purchase "
            "history: {title}, and the information extracted from the product image: {caption}. "
            "You need to determine if the information extracted from the image will be helpful "
            "for recommendation. Only output yes or no."
        ),
        instruction=(
            "Estimate the user's intent based on the user's purchase history, and predict the "
            "next product that the user is most likely to purchase from the given options."
        ),
    ),
]

TASKS: dict[str, Task] = {t.code: t for t in _TASKS}
"""Tasks by code, in the paper's order."""

TASK_CODES: tuple[str, ...] = tuple(TASKS)
_BY_NAME = {t.name: t for t in _TASKS}


def get_task(code_or_name: str) -> Task:
    """Look a task up by code (``sa``) or dataset name (``sentiment_analysis``).

    Raises:
        UnknownTaskError: naming the closest valid code or name.
    """
    key = str(code_or_name).strip()
    if key in TASKS:
        return TASKS[key]
    if key in _BY_NAME:
        return _BY_NAME[key]
    if key.lower() in TASKS:
        return TASKS[key.lower()]
    choices = list(TASKS) + list(_BY_NAME)
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise UnknownTaskError(
        f"unknown task '{key}'{hint} (valid codes: {', '.join(TASKS)}; or their dataset names "
        f"such as '{_TASKS[0].name}')"
    )


def option_label(option: str) -> str:
    """The label a model answers for an option: the text before ``:`` (``"B: neutral"`` -> ``B``)."""
    head, sep, _ = option.partition(":")
    return head.strip() if sep else option.strip()

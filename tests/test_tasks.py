import string

import pytest

from caslie.tasks import TASKS, UnknownTaskError, get_task, option_label


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_seven_tasks_with_paper_metrics():
    assert list(TASKS) == ["ap", "cc", "prp", "psi", "mpc", "sa", "sr"]
    primary = {t.code: t.primary for t in TASKS.values()}
    assert primary == {
        "ap": "f1",
        "cc": "r1",
        "prp": "macro_f1",
        "psi": "f1",
        "mpc": "acc",
        "sa": "macro_f1",
        "sr": "r1",
    }
    assert {t.code for t in TASKS.values() if not t.has_ood} == {"psi", "mpc"}
    assert get_task("sentiment_analysis") is TASKS["sa"] and get_task("SA") is TASKS["sa"]


@pytest.mark.parametrize("task", list(TASKS.values()), ids=lambda t: t.code)
def test_templates_have_the_context_they_need(task):
    assert "caption" in _fields(task.cqe_template)
    assert "caption" not in _fields(task.caption_template)
    assert task.caption_template.startswith(
        "Please generate an informative caption for the product in the image."
    )
    assert task.cqe_template.endswith("Only output yes or no.")
    assert not _fields(task.instruction)


def test_unknown_task_suggests():
    with pytest.raises(UnknownTaskError, match="did you mean 'sentiment_analysis'"):
        get_task("sentiment_analysys")


def test_option_label():
    assert option_label("B: neutral") == "B"
    assert option_label("yes") == "yes"

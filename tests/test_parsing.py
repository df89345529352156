import pytest

from caslie.parsing import parse_answer, parse_paper, parse_robust

YES_NO = {"yes", "no"}
LETTERS = {"A", "B", "C"}


@pytest.mark.parametrize(
    ("text", "valid", "expected"),
    [
        ("yes", YES_NO, "yes"),
        ("  no \n", YES_NO, "no"),
        ("Yes", YES_NO, None),  # the paper's rule is case-sensitive
        ("yes.", YES_NO, None),
        ("B: neutral", LETTERS, "B"),  # ":" keeps the first character
        ("Answer: B", LETTERS, "A"),  # ... even when that is not the answer (the paper's rule)
        ("D", LETTERS, None),  # a letter outside the evaluated gold set
        ("", YES_NO, None),
    ],
)
def test_paper_parser(text, valid, expected):
    assert parse_paper(text, valid) == expected


OPTIONS = ["A: Power Tools", "B: Hand Tools", "C: Garden"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B) Hand Tools", "B"),
        ("Answer: C", "C"),
        ("The answer is A.", "A"),
        ("hand tools", "B"),
        ("B: Hand Tools", "B"),
        ("Lawn care", None),
    ],
)
def test_robust_parser_maps_letters_case_and_option_text(text, expected):
    assert parse_robust(text, LETTERS, OPTIONS) == expected


def test_robust_parser_on_yes_no():
    assert parse_robust("Yes, the document says so.", YES_NO) == "yes"
    assert parse_robust("NO", YES_NO) == "no"
    assert parse_robust("maybe", YES_NO) is None


def test_unknown_parser_is_named():
    with pytest.raises(ValueError, match="unknown eval.parser 'fuzzy'"):
        parse_answer("yes", YES_NO, "fuzzy")

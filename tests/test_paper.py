"""The paper's published numbers as data, and the paper row each kind of run reproduces."""

import pytest

from caslie.config import PAPER_VOTERS
from caslie.paper import FILES, PUBLISHED, column, paper_key, paper_values, published, size_of
from caslie.tasks import TASK_CODES

REFERENCE = PUBLISHED.parents[1].parent / "shared" / "paper"


@pytest.mark.parametrize("table", sorted(FILES))
def test_every_table_loads_with_a_number_or_a_blank_in_each_metric_cell(table):
    rows = published(table)
    assert rows
    for row in rows:
        values = [row[column(t)] for t in TASK_CODES]
        assert all(v is None or 0.0 <= v <= 1.0 for v in values), row


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="the paper's folder is not beside the project")
@pytest.mark.parametrize("table", sorted(FILES))
def test_the_kept_numbers_are_the_papers_byte_for_byte(table):
    assert (PUBLISHED / FILES[table]).read_bytes() == (REFERENCE / FILES[table]).read_bytes()


def test_columns_follow_the_papers_primary_metrics():
    assert [column(t) for t in TASK_CODES] == ["ap_f1", "cc_r1", "prp_mf1", "psi_f1", "mpc_acc",
                                              "sa_mf1", "sr_r1"]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "size"),
    [("mistralai/Mistral-7B-Instruct-v0.3", "M"), ("meta-llama/Llama-2-13b-chat-hf", "L"),
     ("meta-llama/Llama-3.2-3B-Instruct", "S"), ("tiny:mistral", "M"), ("gpt2", None)],
)  # fmt: skip
def test_model_families_map_to_the_papers_sizes(model, size):
    assert size_of(model) == size


def test_runs_map_to_the_paper_rows_they_reproduce():
    m = {"model": "mistralai/Mistral-7B-Instruct-v0.3", "voters": PAPER_VOTERS,
         "tasks": list(TASK_CODES)}  # fmt: skip
    assert paper_key("table2", m | {"fusion": "none"}) == {"model": "ft-Mistral-7B-v0.3",
                                                           "fusion": "none"}  # fmt: skip
    assert paper_key("table2", m | {"fusion": "mv"}) == {"model": "CASLIE-M", "fusion": "mv"}
    assert paper_key("table2", {"model_kind": "fashionclip"})["model"] == "ft-FashionCLIP"
    assert paper_key("table3", m | {"fusion": "mv", "tasks": ["sa"]})["training"] == "task-specific"
    assert paper_key("table4", m | {"fusion": "mv", "caption_model": "llava-hf/llava-1.5-7b-hf"}
                     ) == {"setting": "w/ context & caption", "captioning_model": "LLaVA-1.5-7B"}  # fmt: skip
    assert paper_key("a9", m | {"fusion": "single:phi-3.5-mini-instruct"})["evaluation_model"] == (
        "Phi-3.5-mini-Instruct"
    )
    assert paper_key("a9", m | {"fusion": "mv", "voters": PAPER_VOTERS[:3]}) is None
    assert paper_key("table2", m | {"model": "gpt2", "fusion": "mv"}) is None


def test_paper_values_read_the_right_row_and_split():
    ind = paper_values("table2", {"model": "CASLIE-M", "fusion": "mv"}, "ind")
    ood = paper_values("table2", {"model": "CASLIE-M", "fusion": "mv"}, "ood")
    assert ind["ap"] == 0.891 and ind["psi"] == 0.398 and ood["sr"] == 0.330
    assert ood["psi"] is None  # the paper has no OOD set for psi
    assert paper_values("a9", {"strategy": "mv", "evaluation_model": "above 5 models"},
                        "ind")["prp"] == 0.566  # fmt: skip
    assert paper_values("table2", {"model": "CASLIE-X", "fusion": "mv"}, "ind") == {}

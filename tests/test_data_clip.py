"""FashionCLIP examples: each task's texts, images and options."""

from caslie.config import DataConfig
from caslie.data.clip import clip_example
from caslie.data.records import load_records


def test_examples_lay_out_each_task(sample_rows):

    records, _ = load_records(DataConfig(source="sample"), splits=["train"])
    by_task = {r.task: r for r in records}
    prp = clip_example(by_task["prp"])
    assert len(prp["texts"]) == 2 and len(prp["images"]) == 2
    cc = clip_example(by_task["cc"])
    assert cc["options"][0] == by_task["cc"].options[0].split(": ", 1)[1]
    sr = clip_example(by_task["sr"])
    n_hist = len(by_task["sr"].input)
    assert len(sr["texts"]) == len(sr["images"]) == n_hist
    assert len(sr["option_texts"]) == len(sr["option_images"]) == len(by_task["sr"].options)

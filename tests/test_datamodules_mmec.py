"""MMECDataModule: task-specific loaders, empty splits."""

import pytest

from caslie.errors import DataError
from datamodules.mmec import MMECDataModule


def test_task_specific_module_and_loaders(sample_config, tokenizer):
    dm = MMECDataModule(
        sample_config("data.tasks=sa").data, tokenizer, micro_batch_size=4, eval_batch_size=8
    )
    dm.prepare_data()
    dm.setup("fit")
    assert set(dm.splits["train"]["task"]) == {"sa"}
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and all(b["input_ids"].shape[0] == 4 for b in batches)
    assert next(iter(dm.val_dataloader()[0]))["labels"].shape[0] == 4
    test_loaders = dm.test_dataloader()
    assert len(test_loaders) == 3  # val, test_ind, test_ood
    ids = [m["id"] for b in test_loaders[1] for m in b["meta"]]
    assert sorted(ids) == sorted(dm.splits["test_ind"]["id"])


def test_split_without_rows_is_explained(sample_config, tokenizer):
    dm = MMECDataModule(sample_config("data.tasks=psi").data, tokenizer)
    dm.prepare_data()
    with pytest.raises(
        DataError, match=r"split\(s\) \['test_ood'\] have no rows for tasks \['psi'\]"
    ):
        dm.setup("fit")
    with pytest.raises(DataError, match="split 'test_ood' has no rows for tasks"):
        dm.eval_dataloader("test_ood")

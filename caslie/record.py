"""The typed MMECInstruct row that every layer above passes around (loading lives in ``data/``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from caslie.tasks import TASKS, Task, option_label


@dataclass(frozen=True)
class Record:
    """One validated MMECInstruct row.

    Attributes:
        id: Stable row id (the source's ``id``, else a content hash).
        task: Task code.
        split: Canonical split (``train``, ``val``, ``test_ind``, ``test_ood``).
        instruction: Task instruction.
        input: Parsed ``input`` (a dict, or the list of history items for sr). Do not mutate.
        options: Parsed ``options``, or ``None`` when the row has none (field absent or null).
        output: Gold answer.
        images: Image URL or path per product, in order (sr: history items, then options).
        captions: Parsed ``caption_info`` (same order as ``images``), or ``None`` if absent.
        location: Where the row came from (``file:line``), for messages.
        extras: Columns outside the schema, kept as they are.
        null_options: The row's ``options`` is the JSON text ``"null"``: the prompt shows an options
            block reading ``null``, as the reference renders it.
    """

    id: str
    task: str
    split: str
    instruction: str
    input: Any
    options: tuple[str, ...] | None
    output: str
    images: tuple[str, ...]
    captions: tuple[str | None, ...] | None
    location: str
    extras: dict[str, Any] = field(default_factory=dict, compare=False)
    null_options: bool = False

    @property
    def task_spec(self) -> Task:
        """The task's definition."""
        return TASKS[self.task]

    def labels(self) -> tuple[str, ...]:
        """The answers valid for this row: option labels, or the task's fixed labels."""
        if self.options:
            return tuple(option_label(o) for o in self.options)
        return self.task_spec.fixed_labels or ()

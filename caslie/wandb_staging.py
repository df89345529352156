"""W&B's artifact staging copies, kept in the run folder that needs them.

wandb copies every file it adds to an artifact (a predictions table's JSON and images, each
confusion matrix table) into ``$WANDB_DATA_DIR/artifacts/staging`` (by default
``~/.local/share/wandb``), and nothing removes them afterwards: every offline demo run left about 180
files (4 MB) there. They cannot simply be deleted when the run ends: an offline run's ``.wandb``
file points at those copies by absolute path, and ``wandb sync`` uploads the tables from them. So a
run stages into its own folder instead: the copies live and go with the run, and a later sync finds
them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

DATA_DIR_ENV = "WANDB_DATA_DIR"
"""The variable wandb reads its data folder from (``wandb.env.DATA_DIR``); wandb has no setting for
it, and reads it again at each staged file, so setting it for the run is enough."""

STAGING_FOLDER = Path("wandb") / "data"
"""Where in a run folder W&B stages: beside the ``offline-run-*`` folders whose records point at it."""


@contextlib.contextmanager
def staging_in(run_dir: Path) -> Iterator[Path]:
    """Within the block, W&B stages artifact files under ``<run_dir>/wandb/data``; the variable is
    restored afterwards (unset again when it was unset), also when the block raises.

    Args:
        run_dir: The run folder.

    Yields:
        The data folder W&B uses (its staging copies go to ``artifacts/staging`` inside it).
    """
    folder = (Path(run_dir) / STAGING_FOLDER).resolve()
    previous = os.environ.get(DATA_DIR_ENV)
    os.environ[DATA_DIR_ENV] = str(folder)
    try:
        yield folder
    finally:
        if previous is None:
            os.environ.pop(DATA_DIR_ENV, None)
        else:
            os.environ[DATA_DIR_ENV] = previous

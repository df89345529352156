"""The entry points' log setup: known third-party noise dropped, everything else kept."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

PROBE = """
import logging, warnings
from caslie.console import setup_logging
setup_logging(rank_zero={rank_zero})
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use something else")
warnings.warn("a warning of the user's own")
logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud logging, try X")
logging.getLogger("lightning.pytorch.utilities.rank_zero").info("GPU available: False")
logging.getLogger("lightning.pytorch").info("lightning line")
logging.getLogger("caslie.x").warning("a caslie warning")
"""


def probe(rank_zero: bool) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(rank_zero=rank_zero)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stderr


def test_known_noise_is_dropped_and_the_rest_is_printed_once():
    err = probe(True)
    assert "is_gradient_checkpointing" not in err and "LeafSpec" not in err
    assert "Tip: For seamless cloud logging" not in err
    assert err.count("a warning of the user's own") == 1
    assert err.count("GPU available: False") == 1 and err.count("lightning line") == 1
    assert err.count("a caslie warning") == 1


def test_other_ranks_print_log_warnings_only_and_no_python_warnings():
    err = probe(False)
    assert "GPU available" not in err and "lightning line" not in err
    assert err.count("a caslie warning") == 1
    assert "a warning of the user's own" not in err  # rank zero prints it; once is enough


def test_known_noise_is_dropped_and_other_warnings_kept():
    import warnings

    from caslie.console import quiet_known_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        warnings.warn(
            "The `srun` command is available on your system but is not used. HINT: ...",
            stacklevel=1,
        )
        warnings.warn("something a user can act on", stacklevel=1)
    assert [str(w.message) for w in caught] == ["something a user can act on"]

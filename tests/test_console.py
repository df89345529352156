"""The entry points' log setup: known third-party noise dropped, everything else kept."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
from conftest import REPO

from caslie.console import KNOWN_NOISE, quiet_known_warnings

PROBE = """
import logging, warnings
from caslie.console import setup_logging
setup_logging(rank_zero={rank_zero})
def third_party(message, category, module):
    warnings.warn_explicit(message, category, "/lib/" + module.replace(".", "/") + ".py", 7,
                           module=module)
third_party("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
            "transformers.modeling_utils")
third_party("`isinstance(treespec, LeafSpec)` is deprecated, use something else", FutureWarning,
            "lightning.pytorch.utilities._pytree")
warnings.warn("`is_gradient_checkpointing` is deprecated: a user's copy", FutureWarning)
warnings.warn("a warning of the user's own")
logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: For seamless cloud logging, try X")
logging.getLogger("caslie.x").warning("💡 Tip: For seamless cloud logging, a caslie copy")
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
    assert "modeling_utils" not in err and "LeafSpec" not in err
    assert err.count("is_gradient_checkpointing") == 1  # the user's copy, from __main__
    assert err.count("Tip: For seamless cloud logging") == 1 and "a caslie copy" in err
    assert err.count("a warning of the user's own") == 1
    assert err.count("GPU available: False") == 1 and err.count("lightning line") == 1
    assert err.count("a caslie warning") == 1


def test_other_ranks_print_log_warnings_only_and_no_python_warnings():
    err = probe(False)
    assert "GPU available" not in err and "lightning line" not in err
    assert err.count("a caslie warning") == 1
    assert "a warning of the user's own" not in err  # rank zero prints it; once is enough


def _raise(message: str, category: type[Warning], module: str) -> None:
    warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)


@pytest.mark.parametrize("category,pattern,module", KNOWN_NOISE)
def test_each_known_warning_is_dropped_only_from_the_module_that_raises_it(
    category, pattern, module
):
    message = pattern.replace("\\", "") + " (details)"  # the patterns escape only punctuation
    source = module.replace("\\", "")
    emitted = category if category is not Warning else UserWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        _raise(message, emitted, source)
        _raise(message, emitted, "caslie.models.lora")  # the same words from elsewhere
        _raise(message, emitted, source + "_extra")  # a module whose name only starts the same
        _raise("something a user can act on", UserWarning, source)
    assert [(w.filename, str(w.message)) for w in caught] == [
        ("caslie/models/lora.py", message),
        (source.replace(".", "/") + "_extra.py", message),
        (source.replace(".", "/") + ".py", "something a user can act on"),
    ]


@pytest.mark.slow
def test_importing_the_project_quiets_nothing():
    """Only the entry points install the filters: a program that imports train.py or caslie keeps
    its own warnings setup."""
    probe = (
        "import warnings, train, caslie.cli\n"
        "from caslie.console import KNOWN_NOISE\n"
        "ours = {pattern for _, pattern, _ in KNOWN_NOISE}\n"
        "print([f[1].pattern for f in warnings.filters if f[1] is not None and f[1].pattern in ours])"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"

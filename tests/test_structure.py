"""The project's shape: imports point one way, no circles, tests mirror the package.

Layers, top to bottom: ``train.py`` (the composition root) -> ``datamodules/``, ``callbacks/`` ->
``caslie/``. Inside ``caslie/``: the commands and models on top, then ``pretrained``/``tiny``, then
``data/``, then the bottom modules that everything may use (errors, tasks, record, config, prompts...).
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("caslie", "datamodules", "callbacks")

BOTTOM = {
    "caslie.errors", "caslie.tasks", "caslie.record", "caslie.config", "caslie.prompts",
    "caslie.hub", "caslie.images", "caslie.parsing", "caslie.metrics", "caslie.generation",
    "caslie.optim", "caslie.resume", "caslie.cluster", "caslie.signals", "caslie.console", "caslie.paper",
    "caslie.redact", "caslie.run_lock", "caslie.config_paths", "caslie.config_print",
}  # fmt: skip
"""Modules below ``caslie.data``: they import only each other."""

LOCAL_IMPORTS_ALLOWED = {"caslie.cli"}
"""Modules that import project modules inside functions, each saying why in a comment: the ``caslie``
commands load torch and transformers only when a command needs them."""

MIRROR_EXCEPTIONS = {"test_structure", "test_sweeps", "test_demo", "test_readme"}
"""Test files about the whole project, its sweep files, its demo or its README rather than one
module."""


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {"train": REPO / "train.py"}
    for package in TOP_PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module an import names (``caslie.data.cache`` or a package), else ``None``."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(project module, imported inside a function) for every import of ``path``; imports under
    ``if TYPE_CHECKING:`` do not run and are left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function = True
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            target = _resolve(name)
            if target is not None and (target, in_function) not in out:
                out.append((target, in_function))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function)

    visit(tree, False)
    return out


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_the_graph_covers_the_project():
    assert {
        "train",
        "caslie.pretrained",
        "caslie.tiny",
        "datamodules.mmec",
        "callbacks.eval_report",
    } <= set(MODULES)
    assert ("caslie.pretrained", False) in GRAPH["caslie.cqe"]


def test_no_import_circles():
    edges = {
        m: {t for t, _ in deps if t != m and MODULES[t].name != "__init__.py"}
        for m, deps in GRAPH.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    targets = {t for t, _ in GRAPH[module]}
    if module == "train":
        return  # the composition root may import anything
    assert "train" not in targets, f"{module} imports train.py"
    if module.startswith(("datamodules", "callbacks")):
        upward = {t for t in targets if not t.startswith(("caslie", module.split(".")[0]))}
        assert not upward, (
            f"{module} imports {upward}: datamodules/ and callbacks/ import only caslie"
        )
        return
    assert not {t for t in targets if t.startswith(("datamodules", "callbacks"))}, (
        f"{module} imports a layer above caslie/"
    )
    if module in BOTTOM:
        assert targets <= BOTTOM, f"{module} (a bottom module) imports {targets - BOTTOM}"
    if module.startswith("caslie.data"):
        outside = {t for t in targets if not t.startswith("caslie.data")} - BOTTOM
        assert not outside, f"{module} imports {outside}, above caslie.data"


def test_tiny_models_are_reached_only_through_the_resolver():
    users = {m for m, deps in GRAPH.items() if any(t == "caslie.tiny" for t, _ in deps)}
    assert users == {"caslie.pretrained"}


def test_votes_flow_one_way():
    """caches -> vote decision -> fusion -> prompts -> tokenised dataset; producers of votes and
    captions never import their consumers."""
    consumers = {"caslie.data.fusion", "caslie.data.pipeline"}
    for producer in ("caslie.cqe", "caslie.captioning", "caslie.data.votes", "caslie.data.cache",
                     "caslie.data.captions"):  # fmt: skip
        assert not {t for t, _ in GRAPH[producer]} & consumers, producer


def test_no_function_local_imports_of_project_modules():
    local = {m: [t for t, inside in deps if inside] for m, deps in GRAPH.items()}
    offenders = {m: t for m, t in local.items() if t and m not in LOCAL_IMPORTS_ALLOWED}
    assert not offenders
    for module in LOCAL_IMPORTS_ALLOWED:
        assert "import" in MODULES[module].read_text() and "# Commands import their module" in (
            MODULES[module].read_text()
        )


def test_data_captions_is_read_in_one_place():
    readers = [name for name, path in MODULES.items()
               if ".captions ==" in path.read_text() or ".captions !=" in path.read_text()]  # fmt: skip
    assert readers == ["caslie.config"]  # every consumer asks DataConfig.caption_cache


def test_only_the_library_is_installed():
    text = (REPO / "pyproject.toml").read_text()
    assert '\ninclude = ["caslie*"]\n' in text and "datamodules*" not in text


def test_tests_mirror_the_package():
    expected = {"test_train"}
    for name in MODULES:
        parts = name.split(".")
        if parts[0] == "caslie":
            parts = parts[1:]
        expected.add("test_" + "_".join(parts))
    stray = {p.stem for p in (REPO / "tests").glob("test_*.py")} - expected - MIRROR_EXCEPTIONS
    assert not stray, f"test files that mirror no module: {sorted(stray)}"


def test_the_cli_starts_without_torch_which_is_why_its_commands_import_late():
    probe = "import sys, caslie.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stderr

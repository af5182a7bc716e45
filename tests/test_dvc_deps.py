"""dvc.yaml's deps match the code each stage runs.

DVC re-runs a stage when one of its listed deps changes, so a library file that a stage
imports but does not list means `dvc repro` silently keeps outputs made by old code. This
test reads each stage's script, follows its imports inside the package transitively (the
way Python would load them, ``__init__.py`` first) and compares the files with the stage's
``src/`` deps, both ways. Imports under ``if TYPE_CHECKING:`` never run and are not followed.
"""

from __future__ import annotations

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mnist_vae"
PACKAGE_DIR = ROOT / "src" / PACKAGE
INIT = PACKAGE_DIR / "__init__.py"


def _runtime_nodes(tree: ast.AST):
    """Every node except those inside ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _module_file(dotted: str) -> Path | None:
    """``mnist_vae.a.b`` -> src/mnist_vae/a/b.py, a package -> its ``__init__.py`` (None
    outside the package or for a name that is no module, such as an imported function)."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE:
        return None
    path = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted(path: Path) -> list[str]:
    """src/mnist_vae/a/b.py -> [mnist_vae, a, b]; a package's ``__init__.py`` -> the package."""
    parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _packages_of(path: Path) -> set[Path]:
    """The ``__init__.py`` of every package above ``path``: Python runs each before it."""
    parts = _dotted(path)[:-1]
    return {PACKAGE_DIR.joinpath(*parts[1:i], "__init__.py") for i in range(1, len(parts) + 1)}


@functools.cache
def _tree(path: Path) -> ast.Module:
    """A file's syntax tree, parsed once. The package's and the stages' files are parsed
    when this module is collected (below), before any test has started a thread: CPython
    3.11's AST constructor keeps its recursion count per interpreter, and a parse while
    threads left by other tests run could fail with "AST constructor recursion depth
    mismatch" (seen under pytest-xdist)."""
    return ast.parse(path.read_text(), filename=str(path))


def package_imports(path: Path) -> set[Path]:
    """The package's modules that ``path`` imports directly (with their packages'
    ``__init__.py``); for a module of the package, also the packages above it."""
    tree = _tree(path)
    inside = path.is_relative_to(PACKAGE_DIR)
    here = _dotted(path) if inside else []
    if inside and path.name != "__init__.py":
        here = here[:-1]  # a module's relative imports start from its package
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: only used inside the package
                base = ".".join([*here[: len(here) - node.level + 1], *filter(None, [base])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import mod`
    files = {file for name in found if (file := _module_file(name)) is not None}
    files |= {init for file in files for init in _packages_of(file)}
    if inside:
        files |= _packages_of(path)
    return files - {path}


def closure(script: Path) -> set[Path]:
    """``script`` and every package module it loads, transitively."""
    seen, todo = set(), [script]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(package_imports(path))
    return seen


def _stage_script(cmd: str) -> Path:
    match = re.search(r"(stages/\w+\.py)", cmd)
    assert match, f"cannot find the stage script in {cmd!r}"
    return ROOT / match.group(1)


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
for _file in [*PACKAGE_DIR.rglob("*.py"), *(ROOT / "stages").glob("*.py")]:
    _tree(_file)


def test_every_stage_loads_the_package_init_and_the_cpu_kernel_pin():
    """Importing any module runs ``__init__.py``, which pins the CPU kernels (environment.py):
    both decide the bits of every stage, so every stage lists both."""
    assert package_imports(INIT) == {PACKAGE_DIR / "environment.py"}
    assert package_imports(PACKAGE_DIR / "compression" / "__init__.py") == {INIT}
    for stage, spec in STAGES.items():
        assert INIT in closure(_stage_script(spec["cmd"])), stage


def deps_problems(stage: str, spec: dict) -> list[str]:
    """What is wrong with one stage's Python deps in dvc.yaml (nothing: [])."""
    needed = {p.relative_to(ROOT).as_posix() for p in closure(_stage_script(spec["cmd"]))}
    listed = {d for d in spec.get("deps", []) if d.endswith(".py")}
    return [
        f"dvc.yaml: stage {stage!r} runs {path} but does not list it in deps"
        for path in sorted(needed - listed)
    ] + [
        f"dvc.yaml: stage {stage!r} lists {path} in deps but never imports it"
        for path in sorted(listed - needed)
    ]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_dvc_yaml_lists_exactly_the_code_each_stage_runs(stage):
    problems = deps_problems(stage, STAGES[stage])
    assert not problems, "\n".join(problems)


def test_the_check_names_the_stage_and_a_file_removed_or_added():
    spec = STAGES["evaluate"]
    # metrics.py loads data.py (for `batches`) two imports away from the stage script
    assert PACKAGE_DIR / "data.py" in package_imports(PACKAGE_DIR / "evaluation" / "metrics.py")
    without = {**spec, "deps": [d for d in spec["deps"] if d != "src/mnist_vae/data.py"]}
    assert deps_problems("evaluate", without) == [
        "dvc.yaml: stage 'evaluate' runs src/mnist_vae/data.py but does not list it in deps"
    ]
    serving = "src/mnist_vae/tracking/serving.py"
    extra = {**spec, "deps": [*spec["deps"], serving]}
    assert deps_problems("evaluate", extra) == [
        f"dvc.yaml: stage 'evaluate' lists {serving} in deps but never imports it"
    ]


def test_reading_params_does_not_import_torch(tmp_path):
    (tmp_path / "params.yaml").write_text("train:\n  lr: -1\n")
    code = (
        "import sys\n"
        "from mnist_vae.params import main\n"
        "status = main([sys.argv[1]])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "params.yaml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "params.yaml: train.lr = -1.0 is not allowed; expected a finite number > 0" in (
        result.stderr
    )

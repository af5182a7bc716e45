"""The package's parts import one way: each part may use the parts below it, never those
above. A piece two parts share lives below both (the container format both codecs write is
:mod:`mnist_vae.compression.container`, not a borrow from the lossless codec), so a newcomer
can read the package bottom up and change one part without breaking the one beside it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dvc_deps import PACKAGE_DIR, _dotted, package_imports

LAYERS = [
    {"__init__", "errors", "files", "params", "environment", "progress", "stage", "images"},
    {"invariant"},
    {"data"},
    {"model"},
    {"training"},
    {"compression"},
    {"evaluation"},
    {"tracking"},
    {"cli", "reproducibility"},
]
"""bottom up: the foundations (torch-free but for images), the thread-invariant arithmetic
every training uses, the MNIST files, the networks, fitting them, the codecs, measuring,
MLflow, the command line and the training matrix (which trains every part)"""


def part(path: Path) -> str:
    """The part a module belongs to: its subpackage, or its own name at the top level."""
    dotted = _dotted(path)
    return dotted[1] if len(dotted) > 1 else "__init__"


def layer(path: Path) -> int:
    name = part(path)
    found = [i for i, names in enumerate(LAYERS) if name in names]
    assert found, f"{path.relative_to(PACKAGE_DIR)} belongs to no layer: add it to LAYERS"
    return found[0]


MODULES = sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def upward(module: Path, targets: set[Path]) -> list[str]:
    """What is wrong with ``module`` importing ``targets`` (nothing: [])."""
    return [
        f"{module.relative_to(PACKAGE_DIR)} ({part(module)}) imports "
        f"{target.relative_to(PACKAGE_DIR)} ({part(target)}), a part above it"
        for target in sorted(targets)
        if layer(target) > layer(module)
    ]


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.relative_to(PACKAGE_DIR).as_posix())
def test_a_module_imports_only_its_own_part_or_the_parts_below(module):
    problems = upward(module, package_imports(module))
    assert not problems, "\n".join(problems)


def test_the_check_reports_an_upward_import():
    """Were the model to import the lossless codec, the check would name both."""
    model = PACKAGE_DIR / "model" / "vae.py"
    codec = PACKAGE_DIR / "compression" / "lossless.py"
    assert upward(model, {codec, PACKAGE_DIR / "data.py"}) == [
        "model/vae.py (model) imports compression/lossless.py (compression), a part above it"
    ]
    assert upward(codec, {model}) == []


def test_every_part_is_a_package_with_a_docstring():
    """Each subpackage says in its ``__init__.py`` what it holds and what it may import."""
    for names in LAYERS:
        for name in names:
            folder = PACKAGE_DIR / name
            if folder.is_dir():
                init = (folder / "__init__.py").read_text()
                assert init.startswith('"""') and "import" in init.lower(), name

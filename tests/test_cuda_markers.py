"""Every test that needs CUDA carries the ``cuda`` marker, so ``pytest -m cuda`` (and
``tools/gpu_check.sh``) runs all of them on the day a GPU is there.

Read from the test sources: a test (or a ``pytest.param``) whose skip condition mentions
CUDA (``torch.cuda.is_available`` or a ``needs_cuda`` alias) must also be marked
``pytest.mark.cuda``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
NEEDS_CUDA = re.compile(r"cuda\.is_available|needs_cuda")
MARKED = re.compile(r"mark\.cuda\b")


def _offenders(path: Path, root: Path = TESTS) -> list[str]:
    source = path.read_text()
    tree = ast.parse(source)
    module_marked = any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
        and MARKED.search(ast.get_source_segment(source, node) or "")
        for node in tree.body
    )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            decorators = [ast.get_source_segment(source, d) or "" for d in node.decorator_list]
            # A parametrize decorator's own pytest.param marks are checked below.
            skips = [d for d in decorators if NEEDS_CUDA.search(d) and "parametrize" not in d]
            if skips and not module_marked and not any(MARKED.search(d) for d in decorators):
                found.append(f"{path.relative_to(root)}::{node.name}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "param"
        ):
            for keyword in node.keywords:
                marks = ast.get_source_segment(source, keyword.value) or ""
                if keyword.arg == "marks" and NEEDS_CUDA.search(marks) and not MARKED.search(marks):
                    found.append(f"{path.relative_to(root)}:{node.lineno} pytest.param")
    return found


def test_every_test_that_needs_cuda_is_marked_cuda() -> None:
    offenders = [o for path in sorted(TESTS.rglob("test_*.py")) for o in _offenders(path)]
    assert offenders == [], "add @pytest.mark.cuda to: " + ", ".join(offenders)


def test_the_marker_check_sees_an_unmarked_cuda_test(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        "import pytest, torch\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='x')\n"
        "def test_a(): pass\n"
        "@pytest.mark.cuda\n"
        "@pytest.mark.skipif(not torch.cuda.is_available(), reason='x')\n"
        "def test_b(): pass\n"
        "@pytest.mark.parametrize('d', ['cpu', pytest.param('cuda', marks=[needs_cuda])])\n"
        "def test_c(d): pass\n"
    )
    assert _offenders(sample, tmp_path) == [
        "test_sample.py::test_a",
        "test_sample.py:7 pytest.param",
    ]

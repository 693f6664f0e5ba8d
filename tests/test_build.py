"""BUILD is consistent with the tree: every named file exists, every module has a target."""

import ast
import re

import pytest
from conftest import REPO_ROOT


def _targets():
    """(rule, name, srcs, deps) for every rule call in BUILD, parsed as Python syntax."""
    tree = ast.parse((REPO_ROOT / "BUILD").read_text())
    targets = []
    for node in tree.body:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if not isinstance(call.func, ast.Name) or call.func.id == "load":
            continue
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        targets.append(
            (call.func.id, kwargs["name"], kwargs.get("srcs", []), kwargs.get("deps", []))
        )
    return targets


def _python_files(folder, pattern="*.py"):
    return sorted(
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / folder).glob(pattern)
        if p.name != "__init__.py"
    )


def test_every_named_file_exists():
    missing = [
        src for _, _, srcs, _ in _targets() for src in srcs if not (REPO_ROOT / src).is_file()
    ]
    assert missing == []


def test_every_dependency_is_a_target_or_external():
    names = {name for _, name, _, _ in _targets()}
    unknown = [
        dep
        for _, _, _, deps in _targets()
        for dep in deps
        if dep.startswith(":") and dep[1:] not in names
    ]
    assert unknown == []


@pytest.mark.parametrize(
    "rule, folder, pattern",
    [
        ("py_library", "tfp_advbnn", "*.py"),
        ("py_binary", "trainers", "*.py"),
        ("py_test", "tests", "test_*.py"),
    ],
)
def test_every_module_has_a_target(rule, folder, pattern):
    covered = {src for kind, _, srcs, _ in _targets() if kind == rule for src in srcs}
    assert sorted(set(_python_files(folder, pattern)) - covered) == []


def test_library_targets_depend_on_what_they_import():
    """Each library target lists every tfp_advbnn module its source imports."""
    by_src = {
        srcs[0]: (name, deps) for kind, name, srcs, deps in _targets() if kind == "py_library"
    }
    problems = []
    for src, (name, deps) in by_src.items():
        if not src.startswith("tfp_advbnn/"):
            continue
        text = (REPO_ROOT / src).read_text()
        imported = set(re.findall(r"^from tfp_advbnn import ([\w, ]+)", text, re.M))
        modules = {m.strip() for group in imported for m in group.split(",")}
        for module in modules:
            if f":{module}" not in deps:
                problems.append(f"{name} imports {module} but does not depend on :{module}")
    assert problems == []

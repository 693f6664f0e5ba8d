"""BUILD is consistent with the tree: every named file exists, every module has a target."""

import re

import pytest
from conftest import REPO_ROOT

RULES = ("py_library", "py_binary", "py_test")


def _targets():
    """[(rule, name, srcs, deps)] of BUILD, read by evaluating its Starlark as Python."""
    targets = []

    def rule(kind):
        def record(*, name, srcs=(), deps=(), **kwargs):
            del kwargs
            targets.append((kind, name, list(srcs), list(deps)))

        return record

    namespace = {kind: rule(kind) for kind in RULES}
    namespace.update(
        load=lambda *args: None,
        package=lambda **kwargs: None,
        requirement=lambda name: f"@pypi//{name}",
    )
    exec(compile((REPO_ROOT / "BUILD").read_text(), "BUILD", "exec"), namespace)
    return targets


def _python_files(folder, pattern):
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


def test_target_names_are_unique_and_local_deps_exist():
    names = [name for _, name, _, _ in _targets()]
    assert len(names) == len(set(names))
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
        ("py_library", "tfp_advbnn", "**/*.py"),
        ("py_binary", "trainers", "*.py"),
        ("py_test", "tests", "**/test_*.py"),
    ],
)
def test_every_module_has_a_target(rule, folder, pattern):
    # trainers/flags.py is the library the entry points share, not an entry point.
    kinds = (rule, "py_library") if rule == "py_binary" else (rule,)
    covered = {src for kind, _, srcs, _ in _targets() if kind in kinds for src in srcs}
    assert sorted(set(_python_files(folder, pattern)) - covered) == []


def test_targets_depend_directly_on_what_they_import():
    """Each library and binary lists every tfp_advbnn module its source imports."""
    problems = []
    for kind, name, srcs, deps in _targets():
        if kind == "py_test":
            continue
        for src in srcs:
            text = (REPO_ROOT / src).read_text()
            groups = re.findall(r"^\s*from tfp_advbnn import ([\w, ]+)", text, re.M)
            modules = {m.strip() for group in groups for m in group.split(",")}
            modules |= set(re.findall(r"^\s*from tfp_advbnn\.(\w+) import", text, re.M))
            problems += [
                f"{name} imports {m} but lacks :{m}"
                for m in sorted(modules - {name})
                if f":{m}" not in deps
            ]
    assert problems == []


def test_library_import_graph_has_no_cycles_and_never_imports_trainers():
    libraries = {name: deps for kind, name, _, deps in _targets() if kind == "py_library"}
    library_srcs = [
        src
        for kind, name, srcs, _ in _targets()
        if kind == "py_library" and not name.startswith(("trainers", "test_"))
        for src in srcs
    ]
    importing_trainers = re.compile(r"^\s*(from|import) trainers\b", re.M)
    assert [s for s in library_srcs if importing_trainers.search((REPO_ROOT / s).read_text())] == []
    state = {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", f"import cycle: {' -> '.join([*path, name])}"
        state[name] = "open"
        for dep in libraries.get(name, ()):
            if dep.startswith(":"):
                visit(dep[1:], [*path, name])
        state[name] = "done"

    for name in libraries:
        visit(name, [])

"""BUILD is what scripts/gen_build.py makes of the tree now, and it is consistent with the tree:
every named file exists, every module and test file has a target, every target depends on what
it imports, tests that read ../shared/data declare it, and nothing needs a download."""

import ast
import importlib.util
import re

import pytest
from conftest import REPO_ROOT

RULES = ("py_library", "py_binary", "py_test", "test_suite")
RUNNER = "scripts/bazel_pytest.py"


def _targets():
    """[(rule, name, attrs)] of BUILD, read by evaluating its Starlark as Python."""
    targets = []

    def rule(kind):
        def record(*, name, **attrs):
            targets.append((kind, name, attrs))

        return record

    namespace = {kind: rule(kind) for kind in RULES}
    namespace["package"] = lambda **kwargs: None
    exec(compile((REPO_ROOT / "BUILD").read_text(), "BUILD", "exec"), namespace)
    return targets


def _python_files(folder, pattern):
    return sorted(
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / folder).glob(pattern)
        if p.name != "__init__.py"
    )


def _imported_modules(text):
    """Target names of the tfp_advbnn and trainers modules that ``text`` imports."""
    groups = re.findall(r"^\s*from tfp_advbnn import ([\w, ]+)", text, re.M)
    modules = {m.split()[0] for group in groups for m in group.split(",")}
    modules |= set(re.findall(r"^\s*(?:from|import) tfp_advbnn\.(\w+)", text, re.M))
    groups = re.findall(r"^\s*from trainers import ([\w, ]+)", text, re.M)
    modules |= {f"trainers_{m.split()[0]}" for group in groups for m in group.split(",")}
    modules |= {f"trainers_{m}" for m in re.findall(r"^\s*from trainers\.(\w+)", text, re.M)}
    return modules


def test_build_is_what_the_generator_makes_of_the_tree_now():
    spec = importlib.util.spec_from_file_location("gen_build", REPO_ROOT / "scripts/gen_build.py")
    gen_build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen_build)
    assert (REPO_ROOT / "BUILD").read_text() == gen_build.render(REPO_ROOT), (
        "BUILD is stale: run python scripts/gen_build.py"
    )


def test_every_named_file_exists():
    missing = [
        src
        for _, _, attrs in _targets()
        for src in [*attrs.get("srcs", ()), *attrs.get("data", ())]
        if not src.startswith("@") and not (REPO_ROOT / src).is_file()
    ]
    assert missing == []


def test_target_names_are_unique_and_local_deps_exist():
    targets = _targets()
    names = [name for _, name, _ in targets]
    assert len(names) == len(set(names))
    kinds = {name: kind for kind, name, _ in targets}
    unknown = [
        dep
        for _, _, attrs in targets
        for dep in attrs.get("deps", ())
        if dep.startswith(":") and kinds.get(dep[1:]) != "py_library"
    ]
    assert unknown == []
    not_tests = [
        member
        for kind, _, attrs in targets
        if kind == "test_suite"
        for member in attrs["tests"]
        if kinds.get(member[1:]) != "py_test"
    ]
    assert not_tests == []


@pytest.mark.parametrize("folder", ["tfp_advbnn", "trainers"])
def test_every_module_is_in_a_library(folder):
    covered = {
        src for kind, _, attrs in _targets() if kind == "py_library" for src in attrs["srcs"]
    }
    assert sorted(set(_python_files(folder, "**/*.py")) - covered) == []


def test_every_entry_point_has_a_binary():
    entry_points = [
        src
        for src in _python_files("trainers", "*.py")
        if re.search(r"^if __name__ == .__main__.:", (REPO_ROOT / src).read_text(), re.M)
    ]
    mains = {attrs["main"] for kind, _, attrs in _targets() if kind == "py_binary"}
    assert entry_points and sorted(set(entry_points) - mains) == []


def test_every_test_file_has_one_py_test_that_runs_it():
    runs = {}
    for kind, name, attrs in _targets():
        if kind != "py_test":
            continue
        assert attrs["main"] == RUNNER and RUNNER in attrs["srcs"], name
        (test_file,) = attrs["args"]
        assert test_file in attrs["srcs"], name
        runs.setdefault(test_file, []).append(name)
    test_files = _python_files("tests", "**/test_*.py")
    assert sorted(set(test_files) - set(runs)) == []
    assert sorted(set(runs) - set(test_files)) == []
    assert all(len(names) == 1 for names in runs.values())


def test_targets_depend_directly_on_what_they_import():
    """Under Bazel only declared sources are importable (scripts/bazel_pytest.py drops the
    editable install), so each target lists every tfp_advbnn and trainers module it imports."""
    targets = _targets()
    library_of = {
        src: name for kind, name, attrs in targets if kind == "py_library" for src in attrs["srcs"]
    }
    problems = []
    for kind, name, attrs in targets:
        if kind == "py_binary":  # its imports are those of the library of the same file
            problems += [
                f"{name} lacks :{library_of[s]}"
                for s in attrs["srcs"]
                if f":{library_of[s]}" not in attrs["deps"]
            ]
        elif kind != "test_suite":
            for src in attrs["srcs"]:
                text = (REPO_ROOT / src).read_text()
                problems += [
                    f"{name} imports {module} but lacks :{module}"
                    for module in sorted(_imported_modules(text) - {name})
                    if f":{module}" not in attrs.get("deps", ())
                ]
    assert problems == []


def test_library_import_graph_has_no_cycles_and_never_imports_trainers():
    targets = _targets()
    libraries = {
        name: attrs.get("deps", []) for kind, name, attrs in targets if kind == "py_library"
    }
    library_srcs = [
        src
        for kind, name, attrs in targets
        if kind == "py_library" and not name.startswith(("trainers", "test_"))
        for src in attrs["srcs"]
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
            visit(dep[1:], [*path, name])
        state[name] = "done"

    for name in libraries:
        visit(name, [])


def _data_fixtures():
    """Names of conftest's fixtures that read ../shared/data, directly or through another."""
    tree = ast.parse((REPO_ROOT / "tests/conftest.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    reading = {
        name
        for name, node in functions.items()
        if any(isinstance(n, ast.Name) and n.id == "SHARED_DATA" for n in ast.walk(node))
    }
    grew = True
    while grew:
        more = {
            name for name, node in functions.items() if {a.arg for a in node.args.args} & reading
        }
        grew = bool(more - reading)
        reading |= more
    return reading


def test_tests_that_read_the_shared_data_declare_it():
    fixtures = _data_fixtures()
    assert {"cifar_bin_dir", "small_data"} <= fixtures
    data = {
        attrs["args"][0]: attrs.get("data", [])
        for kind, _, attrs in _targets()
        if kind == "py_test"
    }
    undeclared = []
    for test_file in _python_files("tests", "**/test_*.py"):
        tree = ast.parse((REPO_ROOT / test_file).read_text())
        parameters = {
            arg.arg
            for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef)
            for arg in node.args.args
        }
        if parameters & fixtures and "@shared_data//:cifar10" not in data[test_file]:
            undeclared.append(test_file)
    assert undeclared == []


def test_nothing_is_downloaded():
    """The workspace declares only local repositories, and BUILD loads no rule set."""
    fetching = re.compile(r"http_archive|http_file|git_repository|\.download|pip_parse|@pypi")
    for name in ("WORKSPACE", "local_repos.bzl", "BUILD"):
        assert fetching.findall((REPO_ROOT / name).read_text()) == [], name
    assert re.findall(r"^load\(", (REPO_ROOT / "BUILD").read_text(), re.M) == []

"""Writes BUILD from the tree, with Bazel's native Python rules: a py_library per tfp_advbnn
module or package and per trainers module, a py_binary per trainers entry point, a py_test per
test file (run by scripts/bazel_pytest.py) and a test_suite per tests/ folder. Each target
depends on the tfp_advbnn and trainers modules its sources import; third-party packages come
from the virtual env that WORKSPACE registers as the Python toolchain, so none is declared.

  python scripts/gen_build.py           # rewrites BUILD
  python scripts/gen_build.py --check   # exits 1 if BUILD is not what the tree gives

Example::

  from gen_build import render
  text = render(pathlib.Path("."))  # what BUILD should hold
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNNER = "scripts/bazel_pytest.py"
SHARED_DATA = "@shared_data//:cifar10"
# Names through which a test reaches ../shared/data: conftest's fixtures and its constant.
SHARED_DATA_NAMES = re.compile(r"\b(cifar_bin_dir|cifar_py_dir|small_data|SHARED_DATA)\b")
# A test that runs code from the working tree (REPO_ROOT: subprocesses, reading BUILD) reads
# files Bazel does not track, so its result must never be taken from the cache.
READS_WORKING_TREE = re.compile(r"\bREPO_ROOT\b")
HEADER = """\
# Bazel targets, written by scripts/gen_build.py (do not edit): a py_library per tfp_advbnn
# module or package and per trainers module, a py_binary per trainers entry point, a py_test
# per test file and a test_suite per tests/ folder. Native rules of Bazel 4; third-party
# packages come from the virtual env registered in WORKSPACE. Run: bash scripts/bazel_test.sh

package(default_visibility = ["//visibility:public"])
"""


def _imports(paths):
    """Target names of the tfp_advbnn and trainers modules that these files import."""
    local = set()
    for path in paths:
        text = path.read_text()
        for group in re.findall(r"^\s*from tfp_advbnn import ([\w, ]+)", text, re.M):
            local |= {m.split()[0] for m in group.split(",")}
        local |= set(re.findall(r"^\s*(?:from|import) tfp_advbnn\.(\w+)", text, re.M))
        for group in re.findall(r"^\s*from trainers import ([\w, ]+)", text, re.M):
            local |= {f"trainers_{m.split()[0]}" for m in group.split(",")}
        local |= {f"trainers_{m}" for m in re.findall(r"^\s*from trainers\.(\w+)", text, re.M)}
    return local


def _support_imports(path, support):
    """The test-support modules (by stem) that a test file imports."""
    text = path.read_text()
    names = set(re.findall(r"^\s*from (\w+) import", text, re.M))
    names |= set(re.findall(r"^\s*import (\w+)", text, re.M))
    return [support[name] for name in sorted(names) if name in support]


def _rule(kind, name, **attrs):
    lines = [f"{kind}(", f'    name = "{name}",']
    for key, value in attrs.items():
        if isinstance(value, str):
            lines.append(f'    {key} = "{value}",')
        elif len(value) == 1:
            lines.append(f'    {key} = ["{value[0]}"],')
        elif value:
            lines.append(f"    {key} = [")
            lines += [f'        "{item}",' for item in value]
            lines.append("    ],")
    lines.append(")")
    return "\n".join(lines)


def _libraries(root):
    """{target name: source paths} for tfp_advbnn: one per module, one per package."""
    library = {}
    for path in sorted((root / "tfp_advbnn").iterdir()):
        if path.is_dir() and (path / "__init__.py").exists():
            library[path.name] = sorted(path.rglob("*.py"))
        elif path.suffix == ".py" and path.name != "__init__.py":
            library[path.stem] = [path]
    return library


def render(root=ROOT):
    """The text BUILD should hold for the tree at ``root`` (a pathlib.Path)."""
    root = pathlib.Path(root)
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    rules = [_rule("py_library", "init", srcs=["tfp_advbnn/__init__.py"])]
    for name, paths in _libraries(root).items():
        deps = [":init"] + [f":{m}" for m in sorted(_imports(paths) - {name})]
        rules.append(_rule("py_library", name, srcs=[rel(p) for p in paths], deps=deps))

    rules.append(_rule("py_library", "trainers_init", srcs=["trainers/__init__.py"]))
    for path in sorted((root / "trainers").glob("*.py")):
        if path.name == "__init__.py":
            continue
        deps = [":trainers_init"] + [f":{m}" for m in sorted(_imports([path]))]
        rules.append(_rule("py_library", f"trainers_{path.stem}", srcs=[rel(path)], deps=deps))
        if re.search(r"^if __name__ == .__main__.:", path.read_text(), re.M):
            rules.append(
                _rule(
                    "py_binary",
                    f"{path.stem}_bin",
                    srcs=[rel(path)],
                    main=rel(path),
                    deps=[f":trainers_{path.stem}"],
                )
            )

    tests = root / "tests"
    support_paths = sorted(p for p in tests.rglob("*.py") if not p.name.startswith("test_"))
    support = {p.stem: p for p in support_paths if p.stem != "conftest"}
    rules.append(
        _rule(
            "py_library",
            "test_support",
            srcs=[rel(p) for p in support_paths],
            deps=[f":{m}" for m in sorted(_imports(support_paths))],
        )
    )
    suites = {}
    for path in sorted(tests.rglob("test_*.py")):
        reads = [path] + _support_imports(path, support)
        text = "\n".join(p.read_text() for p in reads)
        attrs = dict(
            srcs=[rel(path), RUNNER],
            main=RUNNER,
            args=[rel(path)],
            data=["pytest.ini"] + ([SHARED_DATA] if SHARED_DATA_NAMES.search(text) else []),
            deps=[f":{m}" for m in sorted(_imports([path]))] + [":test_support"],
        )
        if re.search(r"pytest\.mark\.slow", path.read_text()):
            attrs["timeout"] = "long"
        if READS_WORKING_TREE.search(text):
            attrs["tags"] = ["external"]
        rules.append(_rule("py_test", path.stem, **attrs))
        folder = path.parent.relative_to(tests)
        if folder.parts:
            suites.setdefault(f"tests_{'_'.join(folder.parts)}", []).append(f":{path.stem}")
    for name, members in sorted(suites.items()):
        rules.append(_rule("test_suite", name, tests=members))
    return HEADER + "\n" + "\n\n".join(rules) + "\n"


def main(argv):
    """Rewrites BUILD, or with ``--check`` only reports (status 1) when it is stale."""
    if argv not in ([], ["--check"]):
        sys.exit(f"usage: gen_build.py [--check] (got {' '.join(argv)})")
    text = render(ROOT)
    if argv == ["--check"]:
        if (ROOT / "BUILD").read_text() != text:
            sys.exit("error: BUILD is stale; run python scripts/gen_build.py")
        return
    (ROOT / "BUILD").write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])

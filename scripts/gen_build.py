"""Writes BUILD from the tree: a py_library per tfp_advbnn module or package, a py_binary per
trainers entry point and a py_test per test file, each depending on what its sources import.

  python scripts/gen_build.py   # rewrites BUILD; tests/test_build.py checks it stays current
"""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PIP = {  # import name -> pip requirement
    "numpy": "numpy",
    "tensorflow": "tensorflow",
    "tensorflow_probability": "tensorflow-probability",
    "tf_keras": "tf-keras",
    "tensorflow_datasets": "tensorflow-datasets",
    "keras_tuner": "keras-tuner",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "absl": "absl-py",
    "pytest": "pytest",
    "cleverhans": "cleverhans",
    "tensorboard": "tensorboard",
}
TEST_SUPPORT = ("conftest", "attack_problems", "layer_cases", "data_samples", "eval_support")
TEST_SUPPORT += ("run_support",)


def _imports(paths):
    local, pip = set(), set()
    for path in paths:
        text = path.read_text()
        for group in re.findall(r"^\s*from tfp_advbnn import ([\w, ]+)", text, re.M):
            local |= {m.split()[0] for m in group.split(",")}
        local |= set(re.findall(r"^\s*(?:from|import) tfp_advbnn\.(\w+)", text, re.M))
        for group in re.findall(r"^\s*from trainers import ([\w, ]+)", text, re.M):
            local |= {f"trainers_{m.split()[0]}" for m in group.split(",")}
        local |= {f"trainers_{m}" for m in re.findall(r"^\s*from trainers\.(\w+)", text, re.M)}
        for name in re.findall(r"^\s*(?:from|import) (\w+)", text, re.M):
            if name in PIP:
                pip.add(PIP[name])
    return local, pip


def _rule(kind, name, srcs, deps, extra=""):
    lines = [f"{kind}(", f'    name = "{name}",']
    if extra:
        lines.append(extra)
    lines.append("    srcs = [" + ", ".join(f'"{s}"' for s in srcs) + "],")
    if deps:
        lines.append("    deps = [")
        lines += [
            f'        "{d}",' if d.startswith(":") else f'        requirement("{d}"),' for d in deps
        ]
        lines.append("    ],")
    lines.append(")")
    return "\n".join(lines)


def main():
    rules = []
    library = {}
    for path in sorted((ROOT / "tfp_advbnn").iterdir()):
        if path.name == "__init__.py" or path.name.startswith((".", "_")) and path.is_dir():
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            library[path.name] = sorted(path.glob("*.py"))
        elif path.suffix == ".py":
            library[path.stem] = [path]
    rel = lambda p: str(p.relative_to(ROOT))  # noqa: E731
    rules.append(_rule("py_library", "init", ["tfp_advbnn/__init__.py"], []))
    for name, paths in library.items():
        local, pip = _imports(paths)
        deps = [":init"] + [f":{m}" for m in sorted(local - {name})] + sorted(pip)
        rules.append(_rule("py_library", name, [rel(p) for p in paths], deps))
    rules.append(_rule("py_library", "trainers_init", ["trainers/__init__.py"], []))
    for path in sorted((ROOT / "trainers").glob("*.py")):
        if path.name == "__init__.py":
            continue
        local, pip = _imports([path])
        deps = [":trainers_init"] + [f":{m}" for m in sorted(local)] + sorted(pip)
        if path.stem == "flags":
            rules.append(_rule("py_library", "trainers_flags", [rel(path)], deps))
        else:
            name = "export_main" if path.stem == "export" else path.stem
            if path.stem == "main":
                name = "trainers_main"
            extra = f'    main = "{rel(path)}",'
            rules.append(_rule("py_binary", name, [rel(path)], deps, extra))
    support = sorted(p for p in (ROOT / "tests").rglob("*.py") if p.stem in TEST_SUPPORT)
    local, pip = _imports(support)
    rules.append(
        _rule(
            "py_library",
            "test_support",
            [rel(p) for p in support],
            [f":{m}" for m in sorted(local)] + sorted(pip),
        )
    )
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        local, pip = _imports([path])
        deps = [f":{m}" for m in sorted(local)] + [":test_support"] + sorted(pip - {"pytest"})
        rules.append(_rule("py_test", path.stem, [rel(path)], deps))
    header = (
        "# Bazel targets, written by scripts/gen_build.py: a py_library per tfp_advbnn module or\n"
        "# package, a py_binary per trainers entry point, a py_test per test file. Third-party\n"
        '# packages come from a rules_python pip hub named "pypi" (README, Layout).\n'
        'load("@pypi//:requirements.bzl", "requirement")\n'
        'load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")\n\n'
        'package(default_visibility = ["//visibility:public"])\n'
    )
    (ROOT / "BUILD").write_text(header + "\n" + "\n\n".join(rules) + "\n")


if __name__ == "__main__":
    main()

"""Repository rules that keep `bazel test //...` offline: the Python toolchain is the project's
virtual env, and @rules_cc, @rules_java and @rules_proto (which @bazel_tools's BUILD files load, and
Bazel 4 would otherwise download) are local shims over Bazel's native rules. WORKSPACE calls both.
"""

def _venv_python_impl(ctx):
    workspace = ctx.path(Label("@//:WORKSPACE")).dirname
    venv = ctx.os.environ.get("VENV", ".venv")
    if not venv.startswith("/"):
        venv = "%s/%s" % (workspace, venv)
    python = "%s/bin/python" % venv
    if not ctx.path(python).exists:
        fail("VENV=%s: no Python at %s; create the env (bash scripts/test.sh) or set VENV" % (
            ctx.os.environ.get("VENV", ".venv"),
            python,
        ))
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("BUILD", """\
# The interpreter of the virtual env {venv}; its site-packages supply every third-party
# package, so no target declares pip dependencies.
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "venv_py3",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "venv_pair",
    py3_runtime = ":venv_py3",
)

toolchain(
    name = "toolchain",
    toolchain = ":venv_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
""".format(venv = venv, python = python))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    environ = ["VENV"],
    local = True,
    doc = "A py_runtime toolchain on $VENV/bin/python (VENV relative to the workspace, default .venv).",
)

# Bazel's built-in rules under the names @bazel_tools's BUILD files load them by.
_SHIMS = {
    "rules_cc": ("cc", [
        "cc_binary",
        "cc_import",
        "cc_library",
        "cc_proto_library",
        "cc_test",
        "cc_toolchain",
        "cc_toolchain_suite",
        "fdo_prefetch_hints",
        "fdo_profile",
        "objc_import",
        "objc_library",
    ]),
    "rules_java": ("java", [
        "java_binary",
        "java_import",
        "java_library",
        "java_lite_proto_library",
        "java_package_configuration",
        "java_plugin",
        "java_proto_library",
        "java_runtime",
        "java_test",
        "java_toolchain",
    ]),
    "rules_proto": ("proto", ["proto_lang_toolchain", "proto_library"]),
}

def _native_shim_impl(ctx):
    package, rules = _SHIMS[ctx.name]
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file("BUILD", "")
    ctx.file(package + "/BUILD", "")
    wrappers = [
        "def %s(**attrs):\n    native.%s(**attrs)\n" % (rule, rule)
        for rule in rules
    ]
    ctx.file(
        package + "/defs.bzl",
        '"""Bazel\'s native rules under %s\'s names."""\n\n' % ctx.name + "\n".join(wrappers),
    )

native_shim = repository_rule(
    implementation = _native_shim_impl,
    doc = "@rules_cc, @rules_java or @rules_proto forwarding to the rules built into Bazel 4.",
)

def _no_coverage_tools_impl(ctx):
    ctx.file("WORKSPACE", 'workspace(name = "%s")\n' % ctx.name)
    ctx.file(
        "unavailable.sh",
        "#!/bin/sh\necho 'bazel coverage needs @remote_coverage_tools, a download; " +
        "this offline workspace has none' >&2\nexit 1\n",
        executable = True,
    )
    ctx.file("BUILD", """\
package(default_visibility = ["//visibility:public"])

sh_binary(
    name = "coverage_report_generator",
    srcs = ["unavailable.sh"],
)

sh_binary(
    name = "lcov_merger",
    srcs = ["unavailable.sh"],
)
""")

no_coverage_tools = repository_rule(
    implementation = _no_coverage_tools_impl,
    doc = "Stands in for @remote_coverage_tools, an implicit dependency of every test rule.",
)

def native_shims():
    """Declares every shim; WORKSPACE calls it before Bazel's defaults would fetch them."""
    for name in _SHIMS:
        native_shim(name = name)
    no_coverage_tools(name = "remote_coverage_tools")

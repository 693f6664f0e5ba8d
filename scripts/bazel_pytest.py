"""Entry point of every py_test target in BUILD: runs pytest on the one test file it is given.

Bazel starts it inside the test's runfiles tree with the venv's interpreter; argv[1] is the
test file's path relative to the workspace root, e.g. ``tests/test_run_dir.py``. It honours
``--test_filter`` (as ``pytest -k``) and writes the JUnit XML Bazel asks for.

Example (what ``bazel test //:test_run_dir`` runs)::

  python scripts/bazel_pytest.py tests/test_run_dir.py
"""

import os
import sys


def _drop_editable_finder():
    """The venv's editable install of this repository (``pip install -e``) would import any
    tfp_advbnn or trainers module from the working tree, also one a target does not depend on;
    without it, modules come only from the runfiles, so a missing BUILD dependency fails."""
    sys.meta_path[:] = [
        finder
        for finder in sys.meta_path
        if not getattr(finder, "__module__", "").startswith("__editable__")
    ]


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} TEST_FILE (got {argv[1:]})")
    root = os.path.join(os.environ.get("TEST_SRCDIR", "."), os.environ.get("TEST_WORKSPACE", ""))
    test_file = os.path.join(root, argv[1])
    if not os.path.isfile(test_file):
        sys.exit(f"error: test file {argv[1]} is not in the runfiles ({test_file})")
    _drop_editable_finder()
    # The sandbox leaves HOME read-only; matplotlib would warn about its cache on every test.
    if os.environ.get("TEST_TMPDIR"):
        os.environ.setdefault("MPLCONFIGDIR", os.environ["TEST_TMPDIR"])
    import pytest

    args = [test_file, "-q", "-p", "no:cacheprovider", "-c", os.path.join(root, "pytest.ini")]
    args += ["--rootdir", root]
    if os.environ.get("TESTBRIDGE_TEST_ONLY"):
        args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
    if os.environ.get("XML_OUTPUT_FILE"):
        args.append(f"--junitxml={os.environ['XML_OUTPUT_FILE']}")
    sys.exit(pytest.main(args))


if __name__ == "__main__":
    main(sys.argv)

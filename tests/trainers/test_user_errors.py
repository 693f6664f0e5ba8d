"""Every entry point answers a wrong input (flag, path, file, SavedModel) with one line
``error: ...`` that names the input, exit status 2 and no traceback, and leaves existing runs
and exports as they were; a bug still shows its traceback."""

import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, SHARED_DATA
from run_support import tree_digest

pytest_plugins = ["run_support"]

CIFAR_BIN = SHARED_DATA / "cifar-10-batches-bin"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, finished_run):
    """Wrong inputs beside a trained run: a plain file, an empty directory, a file that is not
    an image, and a run whose only model is a corrupt SavedModel."""
    root = tmp_path_factory.mktemp("user_errors")
    source, _ = finished_run
    run = root / "run"
    shutil.copytree(source, run)
    (root / "a_file").write_text("not a directory\n")
    (root / "empty").mkdir()
    (root / "not_an_image.png").write_text("plain text, not PNG data\n")
    corrupt = root / "corrupt_saved_model"
    shutil.copytree(source, corrupt)
    shutil.rmtree(corrupt / "checkpoints")
    (corrupt / "saved_model").mkdir()
    (corrupt / "saved_model" / "saved_model.pb").write_bytes(b"\x08junk, not a protobuf")
    return root


# (entry point, its arguments with {root} and {data} filled in, what the message must name)
CASES = {
    "unknown enum value": ("trainers.main", ["--defense=magic", "--model_dir={root}/new"], "magic"),
    "out-of-range number": ("trainers.main", ["--epochs=0", "--model_dir={root}/new"], "--epochs"),
    "missing data_dir": (
        "trainers.main",
        ["--data_dir={root}/nowhere", "--model_dir={root}/new"],
        "{root}/nowhere",
    ),
    "model_dir is a file": (
        "trainers.main",
        ["--data_dir={data}", "--model_dir={root}/a_file"],
        "{root}/a_file",
    ),
    "evaluate a directory that is not a run": (
        "trainers.evaluate",
        ["--model_dir={root}/empty"],
        "{root}/empty",
    ),
    "bad list flag": ("trainers.evaluate", ["--model_dir={root}/run", "--sweep_eps=abc"], "abc"),
    "corrupt SavedModel": (
        "trainers.evaluate",
        ["--model_dir={root}/corrupt_saved_model"],
        "saved_model.pb",
    ),
    "export a directory that is not a run": (
        "trainers.export",
        ["--model_dir={root}/empty"],
        "{root}/empty",
    ),
    "export_base is a file": (
        "trainers.export",
        ["--model_dir={root}/run", "--export_base={root}/a_file"],
        "{root}/a_file",
    ),
    "image file that is not an image": (
        "trainers.predict",
        ["--model_dir={root}/run", "{root}/not_an_image.png"],
        "not_an_image.png",
    ),
    "missing image file": (
        "trainers.predict",
        ["--model_dir={root}/run", "{root}/missing.jpg"],
        "missing.jpg",
    ),
    "tuner bound": ("trainers.tune", ["--max_trials=0"], "--max_trials"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_wrong_input_gives_one_error_line_and_status_2(inputs, case):
    module, args, named = CASES[case]
    fill = dict(root=inputs, data=CIFAR_BIN)
    untouched = {name: tree_digest(inputs / name) for name in ("run", "empty")}
    result = subprocess.run(
        [sys.executable, "-m", module, *(a.format(**fill) for a in args)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert named.format(**fill) in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert {name: tree_digest(inputs / name) for name in untouched} == untouched
    assert not (inputs / "new").exists()


def test_a_bug_keeps_its_traceback_and_status_1():
    # A ValueError raised outside the functions that read user inputs is a bug, not a user error.
    program = (
        "from trainers import cli\n"
        "def main(argv):\n"
        "    raise ValueError('a bug in the library')\n"
        "cli.run(main)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "a bug in the library" in result.stderr
    assert "error: a bug" not in result.stderr

"""How every entry point runs: user errors as one line and status 2, a quiet TensorFlow start.

``cli.run(main)`` replaces ``app.run(main)``. A user error prints ``error: <message>`` on stderr
and exits with status 2; anything else (a bug) keeps its traceback. User errors are:

- flag errors (absl's parser, ``app.UsageError``);
- an ``OSError`` or ``ValueError`` (tensorflow's ``OpError`` too for checkpoints and
  SavedModels) raised inside one of ``INPUT_READERS``, the functions that read the user's data,
  model_dir and SavedModel. The same types raised elsewhere are bugs and keep their traceback.

Importing this module (first, before TensorFlow) hides TensorFlow's C++ start-up lines (oneDNN,
CUDA not found, cuInit failed), which ``TF_CPP_MIN_LOG_LEVEL`` does not reach: stderr is held
while TensorFlow is imported and its devices listed, and shown only if that fails.
``--verbosity=0`` (INFO) or more, or ``TF_CPP_MIN_LOG_LEVEL`` below 2, shows them; absl's
Python logging stays at WARNING unless ``--verbosity`` is given.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

_VERBOSITY = re.compile(r"^--?(?:verbosity|v)(?:=(-?\d+))?$")


def _verbosity_asked(argv) -> bool:
    """Whether ``argv`` sets absl's --verbosity (-v) to INFO (0) or more."""
    for i, arg in enumerate(argv[1:], 1):
        match = _VERBOSITY.match(arg)
        if match:
            value = match.group(1) or (argv[i + 1] if i + 1 < len(argv) else "")
            return value.lstrip("-").isdigit() and int(value) >= 0
    return False


def _quiet_start() -> None:
    """Imports TensorFlow and lists its devices with fd 2 held; replays it only on failure."""
    if "tensorflow" in sys.modules:
        return
    if _verbosity_asked(sys.argv) or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") < "2":
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if _verbosity_asked(sys.argv) else "1"
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.buffer.write(held.read())
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_quiet_start()

from absl import app, flags, logging  # noqa: E402


def _input_readers():
    """The code objects of the functions that read user inputs (data, model_dir, SavedModel)."""
    from tfp_advbnn import export, predict, run_dir, tuning
    from tfp_advbnn.data import registry
    from tfp_advbnn.evaluation import runner
    from tfp_advbnn.training import checkpointing, trainer

    functions = [
        registry.load_data,
        run_dir.read_config,
        run_dir.read_model_spec,
        run_dir.check_or_write_config,
        checkpointing.restore_model,
        checkpointing.restore_latest,
        runner.load_model,
        trainer.Trainer._start,
        export.export_version,
        export.export_saved_model,
        predict.read_image_files,
        tuning.load_search_data,
    ]
    return {f.__code__ for f in functions}


INPUT_READERS = None


def user_error(error: BaseException) -> str | None:
    """The one-line message of ``error`` when it is a user error (see above), else None."""
    import tensorflow as tf

    global INPUT_READERS
    if isinstance(error, app.UsageError | flags.Error):
        return _one_line(error)
    if not isinstance(error, OSError | ValueError | tf.errors.OpError):
        return None
    if INPUT_READERS is None:
        INPUT_READERS = _input_readers()
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in INPUT_READERS:
            return _one_line(error)
        tb = tb.tb_next
    return None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {_one_line(error)}", file=sys.stderr)
        sys.exit(2)


def guarded(main):
    """``main`` whose user errors print ``error: ...`` and return 2; other errors propagate."""

    def run_main(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            return main(argv)
        except (Exception, app.UsageError) as error:
            message = user_error(error)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr, flush=True)
            return 2

    return run_main


def run(main, argv=None) -> None:
    """``app.run(main)`` with one-line user errors and status 2 (see the module docstring).

    Example:
      >>> if __name__ == "__main__":
      ...     cli.run(main)
    """
    app.run(guarded(main), argv=argv, flags_parser=_parse_flags)

"""A search spread over several processes or machines: KerasTuner 1.4.8's chief oracle and its
workers, and the per-trial log of which worker ran a trial.

KerasTuner's distributed mode is configured by three environment variables, the same on every
process except the id:

* ``KERASTUNER_TUNER_ID``: ``chief`` on the one process that serves the oracle (any id that
  contains "chief", as KerasTuner tests it), a distinct id such as ``tuner0``, ``tuner1`` on
  each worker;
* ``KERASTUNER_ORACLE_IP``, ``KERASTUNER_ORACLE_PORT``: where the chief serves the oracle (gRPC)
  and where the workers reach it.

The chief runs no trial: it hands trials to the workers, records their results and, once every
worker has been told that no trial is left, writes the search summary. What happens to a trial
whose worker dies (KerasTuner 1.4.8, ``Oracle.create_trial`` and ``Oracle.reload``):

* the oracle keeps the trial as the ongoing trial of that worker's id, and hands the same trial
  back to the next request made with that id; so a worker restarted with the same
  ``KERASTUNER_TUNER_ID`` (on any machine that shares ``tuner_dir``) runs it again, and its
  Trainer resumes from the trial's latest checkpoint in ``trial_<id>/model``;
* until then the chief waits: it ends only when no trial is running and every worker id it has
  seen has been told to stop;
* a restarted chief queues the trials that were running for a retry by any worker.

Each run of a trial appends to ``trial_<id>/runs.jsonl`` one ``start`` line and, when the
trial's metrics are ready, one ``end`` line (tuner id, host, process id, UTC time).
"""

from __future__ import annotations

import json
import os
import socket
import time
from concurrent import futures

TUNER_ID_ENV = "KERASTUNER_TUNER_ID"
ORACLE_IP_ENV = "KERASTUNER_ORACLE_IP"
ORACLE_PORT_ENV = "KERASTUNER_ORACLE_PORT"
RUNS_FILENAME = "runs.jsonl"

# How often the chief checks whether the search is over; KerasTuner's own loop waits 20 s.
_POLL_SECONDS = 0.5
# Seconds the chief's server gives the last replies (the workers' "stop") before closing.
_GRACE_SECONDS = 5.0


def distributed_role(environ=None) -> str | None:
    """``"chief"``, ``"worker"``, or None for a search in one process.

    The search is distributed when ``KERASTUNER_ORACLE_IP`` is set (as in KerasTuner).

    Raises:
      ValueError: naming the variable, when the IP is set but the port or the tuner id is not,
        or the port is not an integer in [1, 65535].
    """
    environ = os.environ if environ is None else environ
    if ORACLE_IP_ENV not in environ:
        return None
    for name in (ORACLE_PORT_ENV, TUNER_ID_ENV):
        if not environ.get(name):
            raise ValueError(
                f"{ORACLE_IP_ENV}={environ[ORACLE_IP_ENV]!r} asks for a distributed search, "
                f"but {name} is not set"
            )
    port = environ[ORACLE_PORT_ENV]
    if not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{ORACLE_PORT_ENV}={port!r} must be a port number in [1, 65535]")
    return "chief" if "chief" in environ[TUNER_ID_ENV] else "worker"


def oracle_address(environ=None) -> str:
    """``ip:port`` of the chief's oracle, from the environment."""
    environ = os.environ if environ is None else environ
    return f"{environ[ORACLE_IP_ENV]}:{environ[ORACLE_PORT_ENV]}"


def serve_oracle(oracle) -> None:
    """Serves ``oracle`` to the workers over gRPC until the search is over: a worker was told to
    stop, no trial is running and every worker id seen has been told to stop.

    The same servicer as KerasTuner's ``oracle_chief.start_server``, with a shorter check of the
    end and a server that is stopped rather than left behind.

    Raises:
      OSError: when the address of ``KERASTUNER_ORACLE_IP``/``KERASTUNER_ORACLE_PORT`` cannot be
        bound (a port in use, an IP not of this machine).
    """
    # Imported here: gRPC is needed only by a distributed search.
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    address = oracle_address()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        server.add_insecure_port(address)
    except RuntimeError as error:
        raise OSError(
            f"cannot serve the oracle at {address} ({ORACLE_IP_ENV}, {ORACLE_PORT_ENV}): {error}"
        ) from None
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(_POLL_SECONDS)
    finally:
        server.stop(_GRACE_SECONDS).wait()


def log_trial_run(trial_dir: str, event: str, tuner_id: str) -> None:
    """Appends one ``event`` (``start`` or ``end``) line to ``trial_dir/runs.jsonl``.

    A trial runs on one worker at a time, so its lines have one writer at a time; an append
    keeps the lines of the earlier runs.
    """
    os.makedirs(trial_dir, exist_ok=True)
    line = {
        "event": event,
        "tuner_id": tuner_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = os.path.join(trial_dir, RUNS_FILENAME)
    # A worker killed while writing leaves a line without its newline: end it first.
    torn = os.path.exists(path) and os.path.getsize(path) > 0 and not _ends_with_newline(path)
    with open(path, "a") as f:
        f.write(("\n" if torn else "") + json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_trial_runs(trial_dir: str) -> list[dict]:
    """The lines of ``trial_dir/runs.jsonl`` (empty when the trial never started), less a line
    torn by a killed worker."""
    path = os.path.join(trial_dir, RUNS_FILENAME)
    if not os.path.exists(path):
        return []
    runs = []
    with open(path) as f:
        for line in f:
            try:
                runs.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return runs


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"

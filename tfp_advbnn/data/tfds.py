"""tensorflow-datasets stores as in-memory arrays, downloaded and prepared on first use.

With ``download`` (the default) a data set that is not prepared in the tfds data directory is
downloaded from its official host and prepared there once; later runs read the prepared store.
Before downloading, the host is probed with one short TCP connection: offline, the loader fails
at once with one message naming the local alternatives, instead of after tfds's minutes of
retries. Without ``download`` nothing is ever fetched.
"""

from __future__ import annotations

import os
import socket
import urllib.parse

import numpy as np

# The probe's budget: long enough for a slow link, short enough for an offline start.
_PROBE_TIMEOUT_SECONDS = 5.0
# With a proxy the host may be reachable only through it, which a direct probe cannot tell.
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")


class DownloadUnavailableError(FileNotFoundError):
    """The data set is not prepared and cannot be downloaded now (disabled, offline, failed)."""


def unreachable_reason(urls) -> str | None:
    """Why the hosts of ``urls`` cannot be reached now, or None when they can (or may).

    One TCP connection per host, at most ``_PROBE_TIMEOUT_SECONDS`` each; skipped (None) when
    a proxy is configured.
    """
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if not parts.hostname:
            continue
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=_PROBE_TIMEOUT_SECONDS).close()
        except OSError as err:
            return f"cannot reach {parts.hostname}:{port} ({err})"
    return None


def _download_urls(builder) -> list[str]:
    """The builder's official download URLs ([] when tfds does not list them)."""
    try:
        return list(builder.url_infos or ())
    except Exception:  # An old or custom builder without checksums: nothing to probe.
        return []


def load_tfds(
    name: str, data_dir, *, download: bool = True, local_files: str = ""
) -> tuple[tuple, tuple, tuple[str, ...]]:
    """Loads the train and test splits of a tfds data set into memory, preparing it if needed.

    Args:
      name: the tfds name ("cifar10", "stl10").
      data_dir: the tfds data directory; None for tensorflow-datasets' default one
        (``~/tensorflow_datasets``).
      download: download and prepare the data set when it is not prepared yet.
      local_files: the local layouts the data set can also be read from, named in the error
        when it is neither prepared nor downloadable ("" when there are none).

    Returns:
      ((x_train, y_train), (x_test, y_test), class names): images uint8 [N, H, W, 3], labels
      int32 [N], in the store's order.

    Raises:
      DownloadUnavailableError (a FileNotFoundError): not prepared, and downloading is
        disabled, the host is unreachable or the download failed; the message names the local
        alternatives.
      FileNotFoundError: the store is broken.
      ValueError: a label lies outside the data set's classes.

    Example:
      >>> (x_train, y_train), (x_test, y_test), names = load_tfds("cifar10", None)
    """
    # Imported on use: it is slow to import, and only this source needs it.
    import tensorflow_datasets as tfds

    store = None if data_dir is None else os.fspath(data_dir)
    where = data_dir or "its default data directory"

    def unavailable(reason: str) -> DownloadUnavailableError:
        return DownloadUnavailableError(
            f"tensorflow-datasets has no prepared '{name}' in {where} and {reason}. Use local "
            "files instead: --data_dir=<directory>"
            + (f" holding {local_files}" if local_files else "")
            + f"; or prepare it with `tfds build {name}"
            + (f" --data_dir={data_dir}" if data_dir else "")
            + "` on a machine with network access."
        )

    try:
        builder = tfds.builder(name, data_dir=store)
        prepared = builder.is_prepared()
    except Exception as err:  # tfds raises many types for a missing or broken store.
        raise FileNotFoundError(f"tfds '{name}' store in {where} is unreadable: {err}") from None
    if not prepared:
        if not download:
            raise unavailable("downloading is disabled (--nodownload)")
        reason = unreachable_reason(_download_urls(builder))
        if reason is not None:
            raise unavailable(f"it cannot be downloaded: {reason}")
    try:
        splits, info = tfds.load(
            name,
            split=["train", "test"],
            data_dir=store,
            download=not prepared,
            as_supervised=True,
            batch_size=-1,
            shuffle_files=False,
            with_info=True,
        )
    except Exception as err:  # Network, checksum and disk errors of the download all end here.
        if prepared:
            raise
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        raise unavailable(f"downloading it failed ({type(err).__name__}: {first_line})") from None
    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(splits)
    names = tuple(info.features["label"].names)
    for split, labels in (("train", y_train), ("test", y_test)):
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ValueError(f"tfds '{name}' {split}: labels out of range [0, {len(names) - 1}]")
    return (
        (np.asarray(x_train, np.uint8), np.asarray(y_train, np.int32)),
        (np.asarray(x_test, np.uint8), np.asarray(y_test, np.int32)),
        names,
    )

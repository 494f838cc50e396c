"""Where the images come from: one reader per source, each returning ``torch.utils.data`` datasets or tensors.

* :mod:`~revnet_app.train.sources.mnist` — MNIST and Fashion-MNIST (torchvision layout, our own IDX reader,
  Debian's Fashion-MNIST package, the embedded 5k MNIST subset);
* :mod:`~revnet_app.train.sources.cifar10` — CIFAR-10's python batches (read without ``pickle.load``);
* :mod:`~revnet_app.train.sources.imagenet` — ImageNet in ``ImageFolder`` layout, skipping unreadable images.

What is done with the images next is elsewhere: the normalisation in ``train/normalization.py``, the
pipeline per dataset (splits, shapes, classes) in ``train/pipeline.py``, the batches in ``train/loaders.py``.
Everything that cannot be found or read is a one-line :class:`DataError` naming the file, or ``--data-dir`` and
the layout it expects.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator


class DataError(RuntimeError):
    """The requested data cannot be found or read; the message says which flag or path to use."""


def error_line(exc: DataError) -> str:
    """A ``DataError``'s message as one line: raised in a ``DataLoader`` worker, it comes back with the worker's
    traceback in its text (``Caught DataError in DataLoader worker process 0. Original Traceback ...``), whose
    last line holds the message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(exc):
        return lines[-1].split("DataError: ", 1)[-1]
    return " ".join(lines)


@contextlib.contextmanager
def removing_created(folders: list[Path]) -> Iterator[None]:
    """Remove again, if the block fails, the folders of ``folders`` that it created and left empty (a failed
    download leaves no empty data folders behind)."""
    created = [f for f in folders if not f.exists()]
    try:
        yield
    except BaseException:
        for f in reversed(created):
            try:
                f.rmdir()
            except OSError:
                pass  # not empty (a partial download) or already gone
        raise


def one_line(exc: BaseException) -> str:
    """``ClassName: message`` on one line (whitespace collapsed), for error messages that quote an exception."""
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__

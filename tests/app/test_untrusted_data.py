"""A data set is untrusted input: CIFAR-10's pickled batches and ``batches.meta`` are read with
``train/safe_pickle.py``, which admits only what a CIFAR-10 batch holds. Real-format batches (numpy 1.x's
``numpy.core.multiarray`` and numpy 2's ``numpy._core.multiarray``) still load; a crafted batch, a payload inside
a batch's dict, a crafted ``batches.meta`` and an object-dtype array are each one ``sources.DataError`` line naming the
file, and the payload runs nothing (a marker file it would create stays absent).

Time budget: ≤ 5 s for the module (each test well under a second; tiny batches of 20 images).
"""

from __future__ import annotations

import builtins
import os
import pickle
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train.sources import cifar10 as cifar10_source  # noqa: E402
from revnet_app.train import sources  # noqa: E402
from revnet_app.train import safe_pickle  # noqa: E402
from test_datasets import make_batch, py2_pickle  # noqa: E402

OLD = b"numpy.core.multiarray"  # the module the real files (numpy 1.x, Python 2, protocol 2) name
NEW = b"numpy._core.multiarray"  # numpy 2's name


class Payload:
    """Pickles as a call of ``func(*args)``: what a crafted file would run on ``pickle.load``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, Payload]:
    """Three ways a pickle could create ``marker``, keyed by the ``module.name`` a protocol-2 pickle refers to
    (Python 2's ``__builtin__`` for ``builtins``)."""
    return {
        f"{os.system.__module__}.system": Payload(os.system, f"touch {shlex.quote(str(marker))}"),  # posix.system
        "__builtin__.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
        f"{open.__module__}.open": Payload(open, str(marker), "w"),  # io.open
    }


PAYLOADS = list(_payloads(Path("x")))


def _batch(per_class: int = 2, seed: int = 0):
    """Images (N, 32, 32, 3), labels (N,) and the batch dict with ``str`` keys, as ``encoding="latin1"`` reads
    the real files."""
    images, labels, batch = make_batch(np.random.default_rng(seed), per_class, "testing batch 1 of 1")
    return images, labels, {k.decode(): v for k, v in batch.items()}


def _protocol2(obj) -> bytes:
    """``pickle.dumps(obj, protocol=2)`` naming numpy's array constructor as the real files do."""
    return pickle.dumps(obj, protocol=2).replace(b"c" + NEW + b"\n", b"c" + OLD + b"\n")


def _cifar_folder(root: Path) -> Path:
    """``root/cifar-10-batches-py/`` with a test batch and ``batches.meta`` in the real format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    _, _, batch = make_batch(np.random.default_rng(0), 2, "testing batch 1 of 1")
    (folder / "test_batch").write_bytes(py2_pickle(batch))
    names = [n.encode() for n in cifar10_source.CIFAR10_CLASSES]
    (folder / "batches.meta").write_bytes(py2_pickle({b"num_cases_per_batch": 20, b"label_names": names}))
    return folder


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg, msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_payloads_are_live(tmp_path, payload):
    """Plain ``pickle.loads`` does run each payload: what the other tests refuse is a real attack."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_payloads(marker)[payload], protocol=2))
    assert marker.exists()


def test_real_format_batch_with_numpy_core_multiarray_loads(tmp_path):
    images, labels, batch = _batch()
    blob = _protocol2(batch)
    assert b"c" + OLD + b"\n_reconstruct\n" in blob and NEW not in blob
    with warnings.catch_warnings():  # numpy 2 reads numpy.core through a deprecated compatibility shim
        warnings.simplefilter("ignore", DeprecationWarning)
        plain = pickle.loads(blob, encoding="latin1")
    assert np.array_equal(plain["data"], batch["data"]) and plain["labels"] == batch["labels"]
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    data, got = cifar10_source.read_cifar10_batch(path)
    assert type(data) is np.ndarray and data.dtype == np.uint8 and np.array_equal(data, batch["data"])
    assert np.array_equal(got, labels)
    assert np.array_equal(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), images)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_batch_with_numpy2_names_loads(tmp_path, protocol):
    _, labels, batch = _batch(seed=1)
    blob = pickle.dumps(batch, protocol=protocol)
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert b"numpy._core." in blob and OLD not in blob
    path = tmp_path / "data_batch_1"
    path.write_bytes(blob)
    data, got = cifar10_source.read_cifar10_batch(path)
    assert type(data) is np.ndarray and np.array_equal(data, batch["data"]) and np.array_equal(got, labels)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_crafted_batch_is_refused_and_runs_nothing(tmp_path, payload):
    folder = _cifar_folder(tmp_path)
    marker = tmp_path / "ran"
    path = folder / "data_batch_1"
    path.write_bytes(_protocol2(_payloads(marker)[payload]))
    with pytest.raises(sources.DataError) as err:
        cifar10_source.read_cifar10_batch(path)
    assert not marker.exists()
    _assert_one_line_naming(err, path, f"refers to {payload}", "refused (untrusted pickle")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_payload_inside_the_batch_dict_is_refused_and_runs_nothing(tmp_path, payload):
    folder = _cifar_folder(tmp_path)
    marker = tmp_path / "ran"
    _, _, batch = _batch()
    batch["x"] = _payloads(marker)[payload]
    path = folder / "test_batch"
    path.write_bytes(_protocol2(batch))
    with pytest.raises(sources.DataError) as err:
        cifar10_source.cifar10(tmp_path, train=False, download=False)
    assert not marker.exists()
    _assert_one_line_naming(err, path, f"refers to {payload}")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_crafted_batches_meta_is_a_data_error_not_a_silent_fallback(tmp_path, payload):
    folder = _cifar_folder(tmp_path)
    assert len(cifar10_source.cifar10(tmp_path, train=False, download=False)) == 20  # the folder itself is good
    marker = tmp_path / "ran"
    meta = folder / "batches.meta"
    meta.write_bytes(_protocol2({"label_names": ["a"] * 9 + [_payloads(marker)[payload]]}))
    with pytest.raises(sources.DataError) as err:
        cifar10_source.cifar10(tmp_path, train=False, download=False)
    assert not marker.exists()
    _assert_one_line_naming(err, meta, f"refer to {payload}", "batches.meta never holds")


def test_harmless_but_unreadable_batches_meta_still_falls_back_to_the_standard_names(tmp_path):
    folder = _cifar_folder(tmp_path)
    (folder / "batches.meta").write_bytes(b"not a pickle")
    assert cifar10_source.cifar10(tmp_path, train=False, download=False).classes == list(cifar10_source.CIFAR10_CLASSES)
    (folder / "batches.meta").unlink()
    assert cifar10_source.cifar10(tmp_path, train=False, download=False).classes == list(cifar10_source.CIFAR10_CLASSES)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_object_dtype_array_in_a_batch_is_refused(tmp_path, protocol):
    marker = tmp_path / "ran"
    _, _, batch = _batch()
    batch["data"] = batch["data"].astype(object)
    batch["extra"] = np.array([_payloads(marker)["__builtin__.exec"]], dtype=object)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    with pytest.raises(sources.DataError) as err:
        cifar10_source.read_cifar10_batch(path)
    assert not marker.exists()
    _assert_one_line_naming(err, path, "refers to a numpy array of dtype object")


def test_refused_global_is_an_unpickling_error_naming_it():
    with pytest.raises(pickle.UnpicklingError, match=r"refused subprocess\.Popen\b") as err:
        safe_pickle.loads(b"csubprocess\nPopen\n(S'true'\ntR.")
    assert isinstance(err.value, safe_pickle.Refused) and err.value.what == "subprocess.Popen"
    with pytest.raises(safe_pickle.Refused, match=r"refused builtins\.getattr"):
        safe_pickle.loads(pickle.dumps(Payload(getattr, "text", "upper"), protocol=4))

"""One checkpoint format for every model: architecture, weights, preprocessing, metrics, configuration.

``{"arch": str, "state_dict": {...}, "preprocess": {"mean": Tensor INPUT_SHAPES[arch], "scale": float},
"metrics": {...}, "config": {...}}`` holds tensors and Python builtins only, so ``torch.load(path,
weights_only=True)`` reads it. Files are written atomically (temporary file, then ``os.replace``), so a
killed process never leaves a truncated checkpoint behind; the temporary file's name holds the writer's PID
(``.NAME.pidPID.XXXX.tmp``) so ``clean_stale_temp`` can delete those of dead processes. Files get the usual
umask-respecting mode (0644 under umask 022).

``load`` and ``load_state`` check what they read (keys, architecture, tensor shapes, preprocessing) and raise
``CheckpointError`` with one line; a failed write raises ``WriteError`` (an ``OSError``) with one line naming the path.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from . import cifar, imagenet, mnist

ARCHITECTURES = {
    "mlp": mnist.mlp,
    "lenet": mnist.lenet,
    "convnet": cifar.convnet,
    "nin": cifar.nin,
    "alexnet": imagenet.alexnet,
    "resnet18": imagenet.resnet18,
    "resnet18-mnist": imagenet.resnet18_mnist,
}
"""Architecture name -> a function returning a fresh reversible network (``revnet.Sequential`` or ``revnet.Graph``)."""

INPUT_SHAPES = {
    "mlp": (1, 28, 28),
    "lenet": (1, 28, 28),
    "convnet": (3, 32, 32),
    "nin": (3, 32, 32),
    "alexnet": (3, 224, 224),
    "resnet18": (3, 224, 224),
    "resnet18-mnist": (1, 28, 28),
}
"""Architecture name -> the per-sample input shape ``(C, H, W)`` it was designed for (inputs are ``(N, C, H, W)``)."""

NUM_CLASSES = {"mlp": 10, "lenet": 10, "convnet": 10, "nin": 10, "alexnet": 1000, "resnet18": 1000,
               "resnet18-mnist": 10}
"""Architecture name -> the number of logits it returns (MNIST and CIFAR-10: 10, ImageNet: 1000)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, or of another architecture."""


class WriteError(OSError):
    """A file could not be written (read-only folder, a file where a folder should be, full disk); one line that
    names the path. The previous file at that path, if any, is left intact."""


ARCH_ARGS = {"alexnet": ("num_classes",), "resnet18": ("num_classes",)}
"""The keyword arguments each builder takes (recorded in checkpoints as ``arch_args``)."""


def is_user_model(arch: str) -> bool:
    """Whether ``arch`` names a user's builder, ``module:function`` (``--model`` of finetune.py/evaluate.py)."""
    return ":" in arch


def build_user_model(spec: str, **kwargs: Any) -> nn.Module:
    """``module:function`` → ``function()`` from ``module`` (the current folder first, then the installed
    packages and ``PYTHONPATH``; :func:`import_user_module`), converted with ``revnet.convert`` unless it already
    is a ``revnet.Sequential``/``Graph``. Any failure is a one-line ``ValueError`` naming ``spec``."""
    import revnet

    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"--model {spec!r}: write it as module:function, e.g. mymodels:small_cnn.")
    try:
        module = import_user_module(module_name)
    except SystemExit as exc:  # a script's sys.exit() at import would end the run silently, with its status
        raise ValueError(f"--model {spec!r}: importing {module_name!r} called sys.exit({exc.code!r}); a module of "
                         "builders must not exit when imported (guard script code with if __name__ == "
                         "'__main__').") from None
    except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError in the user's file, ...
        raise ValueError(f"--model {spec!r}: cannot import {module_name!r} ({exc.__class__.__name__}: {exc}); "
                         "run from the folder that holds it or put it on PYTHONPATH.") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"--model {spec!r}: {module_name} has no function {func_name!r}.")
    model = _call_builder(spec, func_name, func, kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"--model {spec!r}: {func_name}() returned a {type(model).__name__}, not an nn.Module.")
    if isinstance(model, (revnet.Sequential, revnet.Graph)):
        return model
    return revnet.convert(model)


def import_user_module(name: str) -> Any:
    """Import ``name`` (dotted or not) looking in the current folder first, without changing ``sys.path``: a
    top-level module or package found there is loaded from its file under its own name; anything else is
    ``importlib.import_module``. (A script's folder, not the current one, leads ``sys.path`` when it runs as
    ``python train/finetune.py``.)"""
    import importlib
    import importlib.machinery
    import importlib.util
    import os
    import sys

    top = name.partition(".")[0]
    if top not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
    return importlib.import_module(name)


def _call_builder(spec: str, name: str, func: Any, kwargs: dict[str, Any]) -> Any:
    """``func(**kwargs)``; a builder that needs other arguments, raises or exits is a one-line ``ValueError``
    naming it."""
    import inspect

    try:
        required = [p.name for p in inspect.signature(func).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                    and p.name not in kwargs]
    except (TypeError, ValueError):  # a builtin without a signature: just call it
        required = []
    if required:
        raise ValueError(f"--model {spec!r}: {name}() cannot be called without arguments (it needs "
                         f"{', '.join(required)}); pass them with --model-args {required[0]}=VALUE, or wrap it in "
                         f"a function that takes none, e.g. def my_model(): return {name}(...).")
    try:
        return func(**kwargs)
    except SystemExit as exc:
        raise ValueError(f"--model {spec!r}: {name}() called sys.exit({exc.code!r}) instead of returning a "
                         "model.") from None
    except Exception as exc:  # noqa: BLE001 - whatever the user's code raises
        text = " ".join(str(exc).split())
        raise ValueError(f"--model {spec!r}: {name}() raised {exc.__class__.__name__}: {text}") from None


def _is_plain_argument(value: Any) -> bool:
    """A builder argument a checkpoint may record: a number, string, boolean or None, or a list/tuple of them."""
    if isinstance(value, (list, tuple)):
        return all(_is_plain_argument(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def build(arch: str, **arch_args: Any) -> nn.Module:
    """A fresh reversible network of the named architecture (a key of ``ARCHITECTURES``, or ``module:function``
    for a user's builder), with ``arch_args`` (see ``ARCH_ARGS``: ``num_classes`` for alexnet and resnet18)."""
    if is_user_model(arch):
        return build_user_model(arch, **arch_args)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; choose one of: {', '.join(sorted(ARCHITECTURES))}, or "
                         "module:function.")
    unknown = sorted(set(arch_args) - set(ARCH_ARGS.get(arch, ())))
    if unknown:
        raise ValueError(f"model {arch!r} takes no argument {', '.join(unknown)}.")
    return ARCHITECTURES[arch](**arch_args)


_TEMP = re.compile(r"^\..+\.pid(\d+)\.[^.]+\.tmp$")


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_error(path: Path, exc: OSError) -> WriteError:
    """A one-line ``WriteError`` for a failed write of ``path``."""
    what = exc.strerror or exc.__class__.__name__
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space",
            errno.EROFS: "choose a writable folder", errno.EACCES: "choose a writable folder",
            errno.EPERM: "choose a writable folder"}.get(exc.errno, "check the folder")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR) or (path.parent.exists() and not path.parent.is_dir()):
        what, hint = f"{_first_file(path.parent)} is a file, not a folder", "choose another path"
    err = WriteError(f"cannot write {path}: {what}; {hint} (the previous file, if any, is intact).")
    err.errno = exc.errno
    return err


def _first_file(folder: Path) -> Path:
    for p in [folder, *folder.parents]:
        if p.exists():
            return p
    return folder


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file next to ``path`` (named ``.NAME.pidPID.XXXX.tmp``), fsync it and
    rename it into place; on any failure the temporary file is removed and an ``OSError`` becomes ``WriteError``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.pid{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        failed = _os_error_behind(exc)
        if failed is not None and not isinstance(exc, WriteError):
            raise write_error(path, failed) from exc
        raise


def _os_error_behind(exc: BaseException) -> Optional[OSError]:
    """``exc`` itself if it is an ``OSError``; for a ``RuntimeError``, the ``OSError`` it was raised from or while
    handling (``__cause__``/``__context__``): torch's zip writer turns a failed ``write`` (ENOSPC on a full disk)
    into ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos …`` raised during that ``OSError``.
    ``None`` for anything else, so an unrelated error keeps its own type and message."""
    if isinstance(exc, OSError):
        return exc
    if not isinstance(exc, RuntimeError):
        return None
    seen, link = set(), exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError):
            return link
        link = link.__cause__ or link.__context__
    return None


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it into place (see ``write_atomic``); a
    failed write inside ``torch.save`` (a full disk) is the same one-line ``WriteError`` as one outside it."""
    write_atomic(path, lambda f: torch.save(obj, f))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    except OSError:
        return True
    return True


def clean_stale_temp(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of ``write_atomic`` in ``folder`` whose writing process is dead (a killed run);
    those of live processes (another job sharing the folder) are kept. Returns the deleted paths."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and p.is_file() and not _alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _shape(t: Any) -> Optional[tuple]:
    return tuple(t.shape) if isinstance(t, Tensor) else None


def check_state_dict(path: Path, state: Any, expected: Mapping[str, Any], what: str) -> None:
    """``state`` must hold exactly the keys of ``expected`` (a state dict) with tensors of the same shapes."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: {what} is a {type(state).__name__}, not a state dict; it is not a checkpoint of this model.")
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        def listed(keys: list) -> str:
            return ", ".join(map(str, keys[:3])) + (" ..." if len(keys) > 3 else "")
        parts = ([f"missing {listed(missing)}"] if missing else []) + ([f"unexpected {listed(extra)}"] if extra else [])
        raise CheckpointError(f"{path} does not fit {what}: {'; '.join(parts)} in its state dict; "
                              "pass a checkpoint of this architecture.")
    for k, v in expected.items():
        if isinstance(v, Tensor) and not isinstance(state[k], Tensor):
            raise CheckpointError(f"{path} does not fit {what}: {k} is a {type(state[k]).__name__}, not a tensor; "
                                  "pass a checkpoint of this architecture.")
        if _shape(state[k]) != _shape(v):
            raise CheckpointError(f"{path} does not fit {what}: {k} has shape {_shape(state[k])}, expected "
                                  f"{_shape(v)}; pass a checkpoint of this architecture.")


def _got(value: Any) -> str:
    text = repr(value)
    return f"the {type(value).__name__} {text}" if len(text) <= 40 and "\n" not in text else f"a {type(value).__name__}"


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def check_fields(path: Path, ckpt: Mapping[str, Any], what: str = "checkpoint") -> None:
    """The types of a model checkpoint's fields, where present: ``arch`` a string, ``state_dict`` a dict of
    parameter names to tensors, ``preprocess``/``metrics``/``config`` dicts, ``arch_args`` a dict of plain
    arguments, ``input_shape`` a list of positive integers. Anything else (which would fail later with a raw
    ``TypeError: unhashable type`` or the like) is a one-line ``CheckpointError`` naming the path and the field."""
    def refuse(field: str, expected: str, got: str) -> None:
        raise CheckpointError(f"{path} is not a usable {what}: {field!r} must be {expected}, got {got}; pass a file "
                              "written by train/finetune.py.")

    arch = ckpt.get("arch")
    if not isinstance(arch, str) or not arch:
        refuse("arch", "a string naming the architecture (e.g. 'lenet')", _got(arch))
    if "state_dict" in ckpt:
        state, expected = ckpt["state_dict"], "a dict of parameter names to tensors"
        if not isinstance(state, Mapping):
            refuse("state_dict", expected, _got(state))
        for k, v in state.items():
            if not isinstance(k, str):
                refuse("state_dict", expected, f"the key {k!r} ({type(k).__name__})")
            if not isinstance(v, Tensor):
                refuse("state_dict", expected, f"{k!r} = {_got(v)}")
    for field, expected in (("preprocess", "a dict with a tensor 'mean' and a number 'scale'"), ("metrics", "a dict"),
                            ("config", "a dict")):
        if field in ckpt and not isinstance(ckpt[field], Mapping):
            refuse(field, expected, _got(ckpt[field]))
    arch_args = ckpt.get("arch_args")
    if arch_args is not None and not (isinstance(arch_args, Mapping) and all(
            isinstance(k, str) and _is_plain_argument(v) for k, v in arch_args.items())):
        refuse("arch_args", "a dict of plain arguments (numbers, strings, booleans; e.g. {'num_classes': 1000})",
               _got(arch_args))
    shape = ckpt.get("input_shape")
    if shape is not None and not (isinstance(shape, (list, tuple)) and shape and all(map(_is_count, shape))):
        refuse("input_shape", "a list of positive integers (e.g. [1, 28, 28])", _got(shape))


def load_state(
    path: str | os.PathLike,
    required_keys: Iterable[str] = (),
    *,
    map_location: str | torch.device = "cpu",
    shapes: Optional[Mapping[str, Union[tuple, nn.Module, Mapping[str, Any]]]] = None,
    what: str = "checkpoint",
) -> dict:
    """``torch.load(path, weights_only=True)`` of a dict, checked: every key of ``required_keys`` present, and for
    each ``shapes[key]``: a tuple is the tensor's shape, a module or state dict is the nested state dict's keys and
    shapes. A model checkpoint (a dict with ``arch``) gets :func:`check_fields`. Anything else (no file, not a
    torch.save file, truncated, wrong keys, types or shapes) is a one-line ``CheckpointError`` naming the path."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a {what} file; pass the path of the .pt file.")
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}; pass the path of a .pt file written by train/finetune.py.")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        is_torch = zipfile.is_zipfile(path) or head[:1] == b"\x80"
    except OSError as exc:
        raise CheckpointError(f"cannot read {what} {path}: {exc.strerror}.") from exc
    if not is_torch:
        raise CheckpointError(f"cannot read {path}: it is not a {what} (not a file written by torch.save, or "
                              "truncated); pass a .pt file written by train/finetune.py.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(f"cannot read {what} {path}: it holds objects other than tensors and Python builtins "
                              f"({first[:160]}); re-create it with train/finetune.py.") from exc
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt archives raise various errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CheckpointError(f"cannot read {what} {path}: it is truncated or corrupt ({first[:160]}); "
                              "delete it or pass another file.") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a {what} dict; pass a file written by "
                              "train/finetune.py.")
    missing = [k for k in required_keys if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a usable {what}: it lacks {', '.join(map(repr, missing))}; "
                              "pass a file written by train/finetune.py.")
    if "arch" in state:  # a model checkpoint (see the module docstring)
        check_fields(path, state, what)
    for key, expected in (shapes or {}).items():
        if key not in state:
            raise CheckpointError(f"{path} is not a usable {what}: it lacks {key!r}.")
        if isinstance(expected, nn.Module):
            expected = expected.state_dict()
        if isinstance(expected, Mapping):
            check_state_dict(path, state[key], expected, f"{what} {key!r}")
        elif _shape(state[key]) != tuple(expected):
            raise CheckpointError(f"{path} does not fit: {key!r} has shape {_shape(state[key])}, expected "
                                  f"{tuple(expected)}; delete it or pass a matching file.")
    return state


def save(
    path: str | os.PathLike,
    arch: str,
    net: torch.nn.Module,
    preprocess: dict[str, Any],
    metrics: Optional[dict[str, Any]] = None,
    config: Optional[dict[str, Any]] = None,
    *,
    arch_args: Optional[dict[str, Any]] = None,
    input_shape: Optional[tuple] = None,
) -> None:
    """Write a checkpoint (see the module docstring) atomically; ``arch_args`` (``build``'s keyword arguments)
    and ``input_shape`` (the per-sample ``(C, H, W)`` it was trained on) are recorded when given."""
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    pre = {k: (v.detach().cpu() if isinstance(v, Tensor) else v) for k, v in preprocess.items()}
    ckpt = {"arch": arch, "state_dict": state, "preprocess": pre, "metrics": metrics or {}, "config": config or {}}
    if arch_args is not None:
        ckpt["arch_args"] = dict(arch_args)
    if input_shape is not None:
        ckpt["input_shape"] = [int(v) for v in input_shape]
    save_atomic(ckpt, path)


def input_shape_of(ckpt: Mapping[str, Any]) -> tuple:
    """The per-sample input shape a checkpoint was trained on: its ``input_shape``, else (checkpoints written
    before it was recorded) ``INPUT_SHAPES[arch]``, else ``None`` (a user's model)."""
    if ckpt.get("input_shape") is not None:
        return tuple(int(v) for v in ckpt["input_shape"])
    return INPUT_SHAPES.get(ckpt.get("arch"))


def load(
    path: str | os.PathLike, *, arch: Optional[str] = None, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Read a checkpoint with ``weights_only=True``; return ``(net, checkpoint)`` with ``net`` in eval mode.

    ``arch``, if given, must match the checkpoint's architecture. A checkpoint of a user's model
    (``module:function``) is built only when ``arch`` names the same builder: loading a file never imports code
    the caller did not ask for.
    """
    path = Path(path)
    ckpt = load_state(path, ("arch", "state_dict", "preprocess"), map_location=map_location)
    if arch is not None and ckpt["arch"] != arch:
        raise CheckpointError(f"{path} holds a {ckpt['arch']!r} model, not {arch!r}; pass a {arch} checkpoint.")
    if is_user_model(str(ckpt["arch"])) and arch is None:
        raise CheckpointError(f"{path} holds a user's model {ckpt['arch']!r}; pass --model {ckpt['arch']} to build it.")
    if not is_user_model(str(ckpt["arch"])) and ckpt["arch"] not in ARCHITECTURES:
        raise CheckpointError(f"{path} holds an unknown architecture {ckpt['arch']!r}; known: "
                              f"{', '.join(sorted(ARCHITECTURES))}.")
    arch_args = ckpt.get("arch_args") or {}
    try:
        net = build(ckpt["arch"], **arch_args)
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    check_state_dict(path, ckpt["state_dict"], net.state_dict(), f"a {ckpt['arch']!r} model")
    pre = ckpt["preprocess"]
    shape = input_shape_of(ckpt)
    if not isinstance(pre, dict) or not isinstance(pre.get("mean"), Tensor) or not isinstance(
            pre.get("scale"), (int, float)) or not isinstance(pre.get("std", pre["mean"]), Tensor):
        raise CheckpointError(f"{path} has no preprocessing (preprocess needs a tensor 'mean' and a number 'scale'); "
                              "pass a checkpoint written by train/finetune.py.")
    if shape is not None:
        fits = [tuple(shape), (1, *shape), (shape[0], 1, 1)]
        for key in ("mean", "std"):
            if key in pre and _shape(pre[key]) not in fits:
                raise CheckpointError(f"{path}: preprocess {key} has shape {_shape(pre[key])}, expected "
                                      f"{tuple(shape)} or {(shape[0], 1, 1)} for {ckpt['arch']!r} inputs of shape "
                                      f"{tuple(shape)}; pass a checkpoint written by train/finetune.py.")
    bad = [k for k, v in ckpt["state_dict"].items() if isinstance(v, Tensor) and v.is_floating_point()
           and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path} holds NaN or infinite weights ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''}): "
                              "its training diverged; evaluate an earlier checkpoint.")
    net.load_state_dict(ckpt["state_dict"])
    return net.to(map_location).eval(), ckpt

"""Where ``finetune.py`` gets its reference model: a revnet checkpoint (``--reference PATH``), a raw torchvision
``state_dict`` (``--reference PATH --reference-format torchvision``), torchvision's pretrained ImageNet weights
(``--pretrained``), or training one (cached under ``--cache-dir``).

Everything that fails is a one-line ``SystemExit``; in particular ``--pretrained`` without network access names
``--reference PATH`` instead of printing a traceback.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from revnet_app import models
from revnet_app.train import utils
from revnet_app.train.recipes import PRETRAINED

TORCHVISION_PREPROCESSING = ("torchvision's ImageNet preprocessing: Resize(256/224·crop), CenterCrop(crop), x/1 in "
                             "[0, 1], minus mean (0.485, 0.456, 0.406), divided by std (0.229, 0.224, 0.225)")


def fingerprint(*tensors: torch.Tensor) -> str:
    """12 hex digits of the SHA-1 of the tensors' bytes (the reference cache key of in-memory data)."""
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def data_key(pipe) -> str:
    """What identifies a pipeline's training data in the cache: the fingerprint of in-memory images and labels,
    else (an ImageFolder) of its one-line source description."""
    if pipe.fingerprint_tensors:
        return fingerprint(*pipe.fingerprint_tensors)
    return hashlib.sha1(pipe.source.encode()).hexdigest()[:12]


def cache_name(model: str, dataset: str, data_key: str, args) -> str:
    """The file name of a cached reference: model, data, recipe and seed (``module:function`` made file-safe)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", model)
    return (f"{safe}-{dataset}-{data_key}-e{args.ref_epochs}-lr{args.ref_lr:g}-b{args.batch_size}-s{args.seed}"
            + (f"-c{args.crop_size}" if dataset == "imagenet" else "")
            + (f"-{args.dtype}" if getattr(args, "dtype", "float32") != "float32" else ""))


def check_input_shape(ckpt: dict, expected: tuple, source: str, dataset: str) -> None:
    """A reference trained on other inputs than this run's data (``--dataset``, ``--crop-size``) is refused."""
    shape = models.input_shape_of(ckpt)
    if shape is not None and tuple(shape) != tuple(expected):
        raise SystemExit(f"error: {source} takes inputs of shape {tuple(shape)}, but --dataset {dataset} gives "
                         f"{tuple(expected)}; pass a checkpoint trained on this data (or the matching --crop-size).")


def load_given(args, build: Callable[[], nn.Module], pipe, device) -> tuple[nn.Module, dict, str]:
    """``--reference PATH``: a revnet checkpoint, or with ``--reference-format torchvision`` a raw ``state_dict``
    (its preprocessing is then the dataset's standard one, e.g. torchvision's ImageNet normalisation)."""
    if args.reference_format == "torchvision":
        net = build()
        try:
            state = models.load_state(args.reference, map_location="cpu", what="torchvision state_dict")
            models.checkpoint.check_state_dict(Path(args.reference), state, net.state_dict(),
                                               f"a {args.model!r} model")
        except models.CheckpointError as exc:
            raise SystemExit(f"error: --reference-format torchvision: {exc}") from None
        net.load_state_dict(state)
        what = TORCHVISION_PREPROCESSING if pipe.dataset == "imagenet" else f"the {pipe.dataset} default"
        utils.say(f"reference: a raw state_dict; its preprocessing is taken to be {what}", flush=True)
        return net.to(device).eval(), pipe.preprocess, f"given (torchvision state_dict): {args.reference}"
    try:
        net, ckpt = models.load(args.reference, arch=args.model, map_location=device)
    except models.CheckpointError as exc:
        hint = (" (a raw torchvision state_dict needs --reference-format torchvision)"
                if "lacks" in str(exc) or "holds a" in str(exc) else "")
        raise SystemExit(f"error: {exc}{hint}") from None
    check_input_shape(ckpt, pipe.input_shape, args.reference, pipe.dataset)
    return net, ckpt["preprocess"], f"given: {args.reference}"


def load_pretrained(args, build: Callable[[], nn.Module], pipe, device, cache: Path) -> tuple[nn.Module, dict, str]:
    """``--pretrained``: torchvision's ImageNet weights of ``args.model`` (downloaded into torch's hub cache when
    possible), converted and cached as a revnet checkpoint in ``cache``."""
    if args.model not in PRETRAINED or pipe.dataset != "imagenet":
        raise SystemExit(f"error: --pretrained loads torchvision's ImageNet weights of {', '.join(PRETRAINED)} on "
                         f"--dataset imagenet, not {args.model} on {pipe.dataset}; pass --reference PATH or train "
                         "a reference (omit both).")
    if pipe.num_classes != 1000:
        raise SystemExit(f"error: --pretrained weights have 1000 classes, but --data-dir has {pipe.num_classes} class "
                         "folders; pass --reference PATH of a model with as many classes.")
    if cache.is_file():
        try:
            net, _ = models.load(cache, arch=args.model, map_location=device)
        except models.CheckpointError as exc:
            raise SystemExit(f"error: cached pretrained reference: {exc} Delete {cache} to convert it again.") from None
        return net, pipe.preprocess, f"pretrained (torchvision {PRETRAINED[args.model]}), cached: {cache}"
    import torchvision

    weights = torchvision.models.get_weight(PRETRAINED[args.model])
    try:
        state = weights.get_state_dict(progress=not args.no_progress, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - offline: URLError, socket errors, a bad hash, ...
        reason = " ".join(str(exc).split())[:160] or exc.__class__.__name__
        raise SystemExit(f"error: --pretrained: cannot download torchvision's {PRETRAINED[args.model]} weights "
                         f"({exc.__class__.__name__}: {reason}); download {weights.url} on a machine with network "
                         "access and pass --reference PATH --reference-format torchvision.") from None
    net = build()
    net.load_state_dict(state)
    models.save(cache, args.model, net, pipe.preprocess, config={"source": f"torchvision {PRETRAINED[args.model]}",
                "preprocessing": TORCHVISION_PREPROCESSING}, arch_args={"num_classes": 1000},
                input_shape=pipe.input_shape)
    return net.to(device).eval(), pipe.preprocess, f"pretrained (torchvision {PRETRAINED[args.model]}), cached: {cache}"


def load_cached(path: Path, args, pipe, device) -> tuple[nn.Module, dict[str, Any], str]:
    """A reference trained earlier with the same model, data, recipe and seed."""
    try:
        net, ckpt = models.load(path, arch=args.model, map_location=device)
    except models.CheckpointError as exc:
        raise SystemExit(f"error: cached reference: {exc} Delete {path} to train a new reference.") from None
    check_input_shape(ckpt, pipe.input_shape, f"cached reference {path}", pipe.dataset)
    return net, ckpt["preprocess"], f"cached: {path}"

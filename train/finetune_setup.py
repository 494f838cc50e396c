"""What a fine-tuning run is built from: the network (checked on one blank input), the reference model (given,
pretrained, cached or trained here), the training batches of an epoch and the evaluation sets.

``finetune.run`` calls these in order; each refuses bad input with one ``error:`` line.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

import revnet
from revnet_app import models
from revnet_app.train import normalization
from revnet_app.train import distributed, engine, loaders, references, utils
from revnet_app.train import pipeline as pipeline_lib
from revnet_app.train.finetune_args import parse_model_args


def build_network(args: argparse.Namespace, pipe) -> torch.nn.Module:
    """``models.build`` of ``--model`` for this data, checked on one blank input: a model that cannot be built or
    converted, whose output is not one tensor of ``(N, classes)`` logits, is one ``error:`` line naming it."""
    what = f"--model {args.model!r}" if models.is_user_model(args.model) else f"model {args.model!r}"
    try:
        net = models.build(args.model, **builder_args(args, pipe))
    except (ValueError, revnet.RevnetError) as exc:  # build_user_model names the builder and what went wrong
        text = utils.one_line(exc)
        raise SystemExit(f"error: {text if text.startswith('--model') else f'{what}: {text}'}") from None
    try:
        was_training = net.training
        with torch.no_grad():
            out = net.eval()(torch.zeros(1, *pipe.input_shape))
        net.train(was_training)
    except revnet.RevnetError as exc:  # a layer without a reverse, a tuple output, ...
        raise SystemExit(f"error: {what}: {utils.one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a user's forward that fails on this data's input shape
        raise SystemExit(f"error: {what} fails on an input of shape (1, {', '.join(map(str, pipe.input_shape))}) "
                         f"({utils.one_line(exc)}); its input must be {args.dataset}'s.") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, pipe.num_classes):
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise SystemExit(f"error: {what} returns {got} for one image; it must return one tensor of "
                         f"(N, {pipe.num_classes}) logits for {args.dataset}'s {pipe.num_classes} classes.")
    return net


def run_dtype(args: argparse.Namespace) -> torch.dtype:
    """``--dtype`` as a ``torch.dtype`` (float32 for a namespace made before the flag existed)."""
    return getattr(torch, getattr(args, "dtype", None) or "float32")


def arch_args(model: str, pipe, model_args: dict | None = None) -> dict:
    """The builder's arguments for this data (``num_classes`` of alexnet and resnet18), and for a builder of
    one's own (``module:function``) the ``--model-args``."""
    if models.is_user_model(model):
        return dict(model_args or {})
    return {"num_classes": pipe.num_classes} if "num_classes" in models.ARCH_ARGS.get(model, ()) else {}


def builder_args(args: argparse.Namespace, pipe) -> dict:
    """``arch_args`` of this run's model (``--model-args`` for a builder of one's own)."""
    return arch_args(args.model, pipe, parse_model_args(getattr(args, "model_args", None)))


def get_reference_on_every_rank(args, pipe, device, world: distributed.World) -> tuple[torch.nn.Module, dict, str]:
    """:func:`get_reference` on every rank. ``--pretrained`` under torchrun: rank 0 downloads and caches the
    weights first, then the others read its cache (no two processes write one file)."""
    if world.distributed and args.pretrained:
        got = get_reference(args, pipe, device, world) if world.main else None
        world.barrier()
        return got if world.main else get_reference(args, pipe, device, world)
    return get_reference(args, pipe, device, world)


def get_reference(args, pipe, device, world: distributed.World | None = None) -> tuple[torch.nn.Module, dict, str]:
    """The reference model: ``--reference``, ``--pretrained``, a cached one, or a freshly trained (and then
    cached) one; under torchrun every rank trains it together (DDP) and rank 0 writes the cache."""
    world = world or distributed.World()
    build = lambda: build_network(args, pipe)  # noqa: E731
    if args.reference:
        return references.load_given(args, build, pipe, device)
    data_key = references.data_key(pipe)
    if args.pretrained:
        cache = Path(args.cache_dir) / f"{args.model}-imagenet-torchvision-pretrained-c{args.crop_size}.pt"
        return references.load_pretrained(args, build, pipe, device, cache)
    path = Path(args.cache_dir) / f"{references.cache_name(args.model, args.dataset, data_key, args)}.pt"
    if path.exists():
        return references.load_cached(path, args, pipe, device)
    utils.seed_everything(args.seed)
    net = build().to(device, run_dtype(args))  # initialised in float32 (the same draws), then cast
    utils.say(f"training the reference model ({args.ref_epochs} epochs, lr {args.ref_lr}) -> {path}")
    preprocess = pipe.preprocess
    start = time.perf_counter()
    log = engine.train_reference(
        net, None, None, epochs=args.ref_epochs, lr=args.ref_lr, batch_size=args.batch_size,
        seed=args.seed, progress=not args.no_progress and world.main, world=world,
        epoch_batches=lambda epoch: train_batches(pipe.train_set, preprocess, args, device, epoch, world=world))
    seconds = time.perf_counter() - start
    if world.main:
        models.save(path, args.model, net, preprocess, metrics={"train_log": log, "train_seconds": seconds},
                    config={"recipe": "SGD momentum 0.9, weight decay 5e-4, lr halved for the last 20% of epochs",
                            "epochs": args.ref_epochs, "lr": args.ref_lr, "batch_size": args.batch_size,
                            "seed": args.seed, "data": pipe.source},
                    arch_args=builder_args(args, pipe), input_shape=pipe.input_shape)
    return net, preprocess, f"trained ({seconds:.0f} s), cached: {path}"


def train_batches(dataset, preprocess: dict | None, args, device, epoch: int, start: int = 0,
                  world: distributed.World | None = None):
    """One epoch of training batches ``(x, y)`` on ``device`` (``preprocess`` applied unless ``None``: data
    already preprocessed), this rank's shares of the global ``--batch-size`` batches, the number of batches left
    and the epoch's generator (see ``loaders.EpochBatches``).

    Test hook: ``REVNET_TEST_NAN_ON_RANK=R`` scales rank R's first batch by 1e38, so that its loss overflows to
    NaN/inf on that rank only (NaN inputs themselves are refused by the library before any loss)."""
    world = world or distributed.World()
    loader, sampler = loaders.epoch_loader(dataset, args.batch_size, seed=args.seed, epoch=epoch, start=start,
                                           num_workers=args.workers or 0, pin_memory=device.type == "cuda",
                                           rank=world.rank, world_size=world.size)
    dtype = run_dtype(args)
    prepare = ((lambda x: x) if preprocess is None  # noqa: E731
               else (lambda x: normalization.preprocess(x, preprocess, dtype)))
    batches = ((prepare(x).to(device), y.to(device)) for x, y in loader)
    if os.environ.get("REVNET_TEST_NAN_ON_RANK", "") == str(world.rank):
        batches = ((x * 1e38 if i == 0 else x, y) for i, (x, y) in enumerate(batches))
    return batches, len(sampler), sampler.generator


def eval_sets(args, pipe, preprocess: dict, device, world: distributed.World | None = None,
              ) -> tuple[loaders.EvalSet, loaders.EvalSet, loaders.EvalSet]:
    """The final evaluation set (``--eval-samples``, first N or class-balanced), its first
    ``--epoch-eval-samples`` for the per-epoch evaluation, and the validation set, as ``loaders.EvalSet``; under
    torchrun each rank's shard of them (``distributed.shard``: every image on exactly one rank)."""
    world = world or distributed.World()
    from torch.utils.data import Subset

    n_test = len(pipe.test_set)
    n_eval = min(args.eval_samples or n_test, n_test)
    if args.eval_samples > n_test:
        raise SystemExit(f"error: --eval-samples {args.eval_samples} exceeds the {n_test} test images.")
    if args.eval_subset == "balanced" and args.eval_samples:
        idx = pipeline_lib.balanced_subset(pipe.test_targets, n_eval, args.eval_subset_seed).tolist()
    else:
        idx = range(n_eval)
    dtype = run_dtype(args)
    prepare = lambda raw: normalization.preprocess(raw, preprocess, dtype).to(device)  # noqa: E731
    per_image = dtype.itemsize * math.prod(pipe.input_shape) + math.prod(pipe.input_shape)  # float32 input + int8 FGS sign
    kw = dict(device=device, num_workers=args.workers or 0, pin_memory=device.type == "cuda",
              cache_bytes=args.eval_cache_mb << 20, bytes_per_image=per_image)
    n_epoch = min(args.epoch_eval_samples or n_eval, n_eval)
    if not world.distributed:
        test = loaders.EvalSet(Subset(pipe.test_set, idx), prepare, args.eval_batch_size, **kw)
        return test, test.subset(n_epoch), loaders.EvalSet(pipe.val_set, prepare, args.eval_batch_size, **kw)
    part = lambda data, positions: loaders.EvalSet(  # noqa: E731
        Subset(data, distributed.shard(positions, world)), prepare, args.eval_batch_size, **kw)
    return part(pipe.test_set, idx), part(pipe.test_set, list(idx)[:n_epoch]), part(pipe.val_set, range(len(pipe.val_set)))


def materialize(dataset, preprocess: dict, device, batch_size: int, budget_bytes: int, what: str,
                dtype: torch.dtype = torch.float32) -> tuple:
    """All of ``dataset`` preprocessed, as tensors ``(x, y)`` on ``device`` (Adv. Train I's DeepFool set needs
    the whole training set); refused with one line if it would exceed ``budget_bytes``."""
    from torch.utils.data import DataLoader

    first = dataset[0][0] if len(dataset) else None
    size = len(dataset) * (4 * first.numel() if first is not None else 0)
    if size > budget_bytes:
        raise SystemExit(f"error: {what} needs the {len(dataset)} training images in memory ({size / 2**20:.0f} MB, "
                         f"more than --eval-cache-mb {budget_bytes >> 20}); fine-tune on fewer with --train-samples N "
                         "or raise --eval-cache-mb.")
    xs, ys = [], []
    for raw, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=loaders.quiet_generator()):
        xs.append(normalization.preprocess(raw, preprocess, dtype).to(device))
        ys.append(y.to(device))
    return torch.cat(xs), torch.cat(ys)


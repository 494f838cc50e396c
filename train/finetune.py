"""Fine-tune a classifier with Deep Defense (or a baseline) and evaluate its robustness: MNIST, Fashion-MNIST,
CIFAR-10 or ImageNet, the paper's six networks or a model of one's own (``module:function``).

Example::

    python train/finetune.py lenet --data-dir ../shared/data --out runs/lenet-dd
    python train/finetune.py nin --data-dir DIR_WITH_cifar-10-batches-py
    python train/finetune.py resnet18 --data-dir IMAGENET_DIR --pretrained
    python train/finetune.py mymodels:small_cnn --dataset mnist     # mymodels.py in the current folder

Without ``--reference`` a reference model is trained first with plain cross-entropy (cached under
``--cache-dir``, keyed by architecture, data, recipe and seed, and reused). The reference and every epoch of the
fine-tuned model are evaluated (accuracy, DeepFool ρ₂, FGS accuracy at fractions of the reference's ε_ref), and
the run ends with a before/after table at the fine-tuned model's ε_ref, as in the paper's Table 1.

The run directory ``--out`` holds ``config.json`` (flags, git commit, package versions, data source),
``log.jsonl`` (one line per epoch), ``metrics.json`` and ``summary.md`` (the final table), ``final.pt`` (the
fine-tuned model, readable with ``torch.load(weights_only=True)`` / ``models.load``) and ``resume/checkpoint.pt``
(written atomically after every epoch, and every ``--checkpoint-every`` steps within one; ``--resume`` continues
from it exactly). Data goes through ``torch.utils.data.DataLoader`` (``train/pipeline.py``); the defaults per
dataset and model are in ``train/recipes.py`` (``finetune.py MODEL --help`` lists them).

``cli(argv, after_checkpoint=f)`` calls ``f(steps)`` after every checkpoint with the number of training steps
done in this process; the tests install one that kills the process there, as a power cut would, to check that
``--resume`` then ends equal to an uninterrupted run (``tests/finetune_killed.py``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch


from revnet_app.train import data as data_lib  # noqa: E402
from revnet_app.train import distributed  # noqa: E402
from revnet_app.train import engine  # noqa: E402
from revnet_app.train import loaders  # noqa: E402
from revnet_app.train import pipeline as pipeline_lib  # noqa: E402

from revnet_app.train import references  # noqa: E402
from revnet_app.train import utils  # noqa: E402
from revnet_app.train import methods  # noqa: E402
from revnet_app.train.cli import check_device, finite_float, valid_devices  # noqa: E402,F401
from revnet_app.train.methods import LABELS  # noqa: E402
from revnet_app.train.recipes import DATASET_DEFAULTS, DEFAULTS, default_settings  # noqa: E402,F401
from revnet_app.train.references import fingerprint  # noqa: E402,F401
from revnet_app.train.finetune_args import (  # noqa: E402,F401  (the command line, in its own file)
    FLOAT_FLAGS, METHOD_HELP, check_args, get_args_parser, parse_model_args)

from revnet_app import models  # noqa: E402
import revnet  # noqa: E402

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
               else (lambda x: data_lib.preprocess(x, preprocess, dtype)))
    batches = ((prepare(x).to(device), y.to(device)) for x, y in loader)
    if os.environ.get("REVNET_TEST_NAN_ON_RANK", "") == str(world.rank):
        batches = ((x * 1e38 if i == 0 else x, y) for i, (x, y) in enumerate(batches))
    return batches, len(sampler), sampler.generator


def epoch_legend(epoch_eps: float) -> str:
    """What the reference line and the per-epoch lines mean (printed once, before the first epoch)."""
    return (
        "  rho2 = mean ‖Δx‖/‖x‖ of DeepFool over the evaluated images (higher = more robust)\n"
        "  eps_ref = the smallest FGS step ε that misclassifies 50% of the evaluated images (higher = more robust)\n"
        f"  fgs@1.0 = test accuracy under FGS at 1.0·ε_ref, with the reference's ε_ref = {epoch_eps:.4g} fixed for "
        "every epoch so the epochs are comparable"
    )


def final_legend(eps: float, epoch_eps: float) -> str:
    """What the final table's ε_ref is (printed once, under the table): not the per-epoch one."""
    return (f"ε_ref in the table = {eps:.4g} is the fine-tuned model's own (the epochs above used the reference's, "
            f"{epoch_eps:.4g}); both rows are attacked at 0.2/0.5/1.0 of it, as in the paper's Table 1, so the "
            "fine-tuned model's acc. @1.0 ε_ref is ~50% by construction\n")


def summary_markdown(args, ref_final: dict, ft_final: dict, eps: float, wall: float, source: str) -> str:
    rows = []
    for name, m in [("Reference", ref_final), (f"Fine-tuned: {LABELS[args.method]} ({args.method})", ft_final)]:
        rows.append({"model": name, "acc": f"{100 * m['acc']:.2f}%", "rho2": f"{m['rho2']:.4f}",
                     **{f"f{f}": f"{100 * m[f'fgs_acc@{f}']:.2f}%" for f in engine.FRACTIONS}})
    cols = [("model", "model"), ("acc", "test acc."), ("rho2", "ρ₂")] + [
        (f"f{f}", f"acc. @{f} ε_ref") for f in engine.FRACTIONS]
    ratio_text = (f"×{ft_final['rho2'] / ref_final['rho2']:.3f}" if ref_final["rho2"]
                  else "undefined (the reference's ρ₂ is 0)")
    return (
        f"# {args.model}: {args.method} fine-tuning\n\n"
        f"- data: {source}; evaluated on {ft_final['n']} test images\n"
        f"- ε_ref = {eps:.5g} (the fine-tuned model's; FGS images clipped to the pixel range: {'yes' if args.clip else 'no'})\n"
        f"- ρ₂ ratio: {ratio_text}; wall time {wall:.0f} s\n\n"
        + utils.format_table(rows, cols) + "\n"
    )


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
        idx = pipeline_lib.ds.balanced_subset(pipe.test_targets, n_eval, args.eval_subset_seed).tolist()
    else:
        idx = range(n_eval)
    dtype = run_dtype(args)
    prepare = lambda raw: data_lib.preprocess(raw, preprocess, dtype).to(device)  # noqa: E731
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
        xs.append(data_lib.preprocess(raw, preprocess, dtype).to(device))
        ys.append(y.to(device))
    return torch.cat(xs), torch.cat(ys)


def main(args: argparse.Namespace, after_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``finetune.py`` with parsed ``args``; ``after_checkpoint(steps)`` (tests only) runs after every
    checkpoint with the number of training steps this process has done."""
    parser = get_args_parser()
    check_args(args, parser)
    if args.workers is None:
        args.workers = 0 if args.dataset != "imagenet" else min(4, os.cpu_count() or 1)
    if args.threads:
        torch.set_num_threads(args.threads)
    if distributed.launched_by_torchrun():
        world, device = distributed.init(args.device)
    else:
        world, device = distributed.World(), utils.resolve_device(args.device)
    try:
        return run(args, world, device, after_checkpoint)
    finally:
        world.close()


def run(args: argparse.Namespace, world: distributed.World, device: torch.device,
        after_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The whole run on this process (rank ``world.rank`` of ``world.size``; rank 0 alone prints and writes)."""
    out = Path(args.out)
    resume_path = out / "resume" / "checkpoint.pt"
    if resume_path.exists() and not args.resume:
        raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it or choose another --out.")
    if world.main:  # a file in the way, a read-only folder or a full disk: refused now, not later
        utils.prepare_dir(out, "--out")
        if not args.reference:
            utils.prepare_dir(args.cache_dir, "--cache-dir")
    world.barrier()
    progress = not args.no_progress and world.main
    config = {"args": vars(args), "device": str(device), "world_size": world.size, "backend": world.backend,
              **utils.environment()}
    utils.say("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())))
    wall_start = time.perf_counter()

    try:
        pipe = pipeline_lib.load_pipeline(args.dataset, args.data_dir, download=not args.no_download,
                                          val_size=args.val_size, train_samples=args.train_samples, seed=args.seed,
                                          crop=args.crop_size)
    except data_lib.DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    config["data"] = pipe.source
    utils.say(f"data: {pipe.source}; training on {len(pipe.train_set)} images, {len(pipe.val_set)} held out")

    utils.seed_everything(args.seed)
    try:
        ref_net, preprocess, ref_origin = get_reference_on_every_rank(args, pipe, device, world)
    except ValueError as exc:  # a user's --model that cannot be built
        raise SystemExit(f"error: {exc}") from None
    ref_net = ref_net.to(dtype=run_dtype(args))  # a float32 --reference or cache in a --dtype float64 run
    config["reference"] = ref_origin
    utils.say(f"reference: {ref_origin}")
    if world.rank:  # Dropout masks: each rank its own stream (rank 0's is the single-process one)
        torch.manual_seed(args.seed + 1_000_003 * world.rank)

    test_set, epoch_set, val_set = eval_sets(args, pipe, preprocess, device, world)
    n_eval, n_epoch_eval = int(world.sum([len(test_set)])[0]), int(world.sum([len(epoch_set)])[0])
    clip = data_lib.pixel_range(preprocess, pipe.input_shape, pipe.raw_max) if args.clip else None
    # top-K DeepFool classes; K >= the number of classes (a small ImageFolder) means all of them
    candidates = args.candidates if args.candidates and args.candidates < pipe.num_classes else None
    eval_kw = dict(max_iter=args.eval_max_iter, overshoot=args.overshoot, batch_size=args.eval_batch_size,
                   clip=clip, candidates=candidates, progress=progress, world=world)

    net = build_network(args, pipe).to(device, run_dtype(args))
    modules_with_params = [name for name, m in net.named_modules() if name and any(True for _ in m.parameters(False))]
    all_modules = {name for name, _ in net.named_modules() if name}
    if args.reg_layers and not set(args.reg_layers) <= all_modules:
        raise SystemExit(f"error: --reg-layers {args.reg_layers}: {args.model}'s modules with parameters are "
                         f"{modules_with_params} (print(models.build({args.model!r})) shows them).")
    method = methods.build(args.method, {**vars(args), "clip": clip, "candidates": candidates})
    if args.reg_layers and not method.uses("reg_layers"):
        raise SystemExit("error: --reg-layers applies to the Deep Defense methods only.")
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    milestones = [args.epochs - args.lr_drop_epochs] if args.lr_drop_epochs else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.5)

    mid, state = None, None  # mid: a mid-epoch checkpoint {"epoch", "step", "totals", "generator", "rng"}
    if args.resume and resume_path.exists():  # checked before config.json is written: a refused resume changes nothing
        state = utils.load_resume(resume_path, net, device)
        check_resume_args(state.get("args", {}), vars(args), resume_path)
        check_resume_world(state, world, resume_path)
    if world.main:
        try:
            utils.write_json(out / "config.json", config)
        except models.WriteError as exc:
            raise SystemExit(f"error: {exc}") from None
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["rng"].get("ranks", [state["rng"]["torch"]])[world.rank])
        start_epoch, history, ref_metrics = state["epoch"] + 1, list(state["history"]), state["reference_metrics"]
        mid = state.get("mid_epoch")
        where = f"step {mid['step']} of epoch {mid['epoch']}" if mid else f"epoch {state['epoch']}"
        utils.say(f"resuming {out} after {where}")
    else:
        net.load_state_dict(ref_net.state_dict())
        utils.say(f"evaluating the reference on {n_epoch_eval} test images ...")
        ref_metrics = engine.evaluate(net, epoch_set, find_eps_ref=True, desc="reference", **eval_kw)
        if len(val_set):
            ref_metrics["val"] = engine.evaluate(net, val_set, desc="reference (validation)", **eval_kw)
        utils.say(f"reference: acc {ref_metrics['acc']:.4f}, rho2 {ref_metrics['rho2']:.4f}, "
              f"eps_ref {ref_metrics['own_eps_ref']:.4g}")
        start_epoch, history = 1, []
    epoch_eps = ref_metrics["own_eps_ref"]  # fixed for the whole run so the curves are comparable
    utils.say(epoch_legend(epoch_eps))

    train_set, train_pre, advtrain_info = pipe.train_set, preprocess, None
    if method.needs_train_tensors:  # a set of its own made from the training images (Adv. Train I)
        train_x, train_y = materialize(pipe.train_set if pipe.in_memory else pipe.train_eval_set, preprocess, device,
                                       args.eval_batch_size, args.eval_cache_mb << 20, args.method, run_dtype(args))
        train_x, train_y, advtrain_info = method.prepare(train_x, train_y, ref_net=ref_net, out=out,
                                                         batch_size=args.eval_batch_size)
        train_set, train_pre = loaders.TensorImages(train_x, train_y), None

    steps_done = [0]

    def save_resume(epoch_done: int, extra: dict | None = None) -> None:
        """Every rank calls it (the RNG states are gathered); rank 0 writes, and no rank goes on before the
        checkpoint is complete, so a kill after it always finds it."""
        rngs = world.gather(torch.get_rng_state())
        if world.main:
            models.save_atomic(
                {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                 "lr_scheduler": scheduler.state_dict(), "epoch": epoch_done,
                 "rng": {"torch": rngs[0], "ranks": rngs}, "world_size": world.size, "args": _plain(vars(args)),
                 "history": history, "reference_metrics": ref_metrics, **({"mid_epoch": extra} if extra else {})},
                resume_path,
            )
        world.barrier()

    for epoch in range(start_epoch, args.epochs + 1):
        start_step = mid["step"] if mid and mid["epoch"] == epoch else 0
        batches, num_left, gen = train_batches(train_set, train_pre, args, device, epoch, start_step, world)
        totals = None
        if start_step:
            gen.set_state(mid["generator"])
            torch.set_rng_state(mid["rng"][world.rank] if isinstance(mid["rng"], list) else mid["rng"])
            # the saved sums are over every rank: rank 0 carries them on, the others start from zero
            totals = mid["totals"] if world.main else None
        total_steps = start_step + num_left

        def on_step(step: int, running: dict, epoch=epoch, gen=gen, total_steps=total_steps) -> None:
            steps_done[0] += 1
            if args.checkpoint_every and step % args.checkpoint_every == 0 and step < total_steps:
                keys = sorted(running)
                summed = dict(zip(keys, world.sum([running[k] for k in keys])))
                save_resume(epoch - 1, {"epoch": epoch, "step": step, "totals": summed,
                                        "generator": gen.get_state(), "rng": world.gather(torch.get_rng_state())})
                if after_checkpoint is not None:
                    after_checkpoint(steps_done[0])

        t0 = time.perf_counter()
        try:
            stats = engine.train_one_epoch(
                net, method, optimizer, batches, generator=gen, world=world, amp=args.amp,
                progress=engine.EpochProgress(desc=f"epoch {epoch}/{args.epochs}", bar=progress, num_batches=num_left,
                                              start_step=start_step, totals=totals, on_step=on_step),
            )
        except engine.NonFiniteLossError as exc:
            fail_run(out, args, history, f"{exc} (epoch {epoch}){weak_reference_hint(args, ref_metrics)}",
                     resume_path, world)
        mid = None
        lr_used = optimizer.param_groups[0]["lr"]  # this epoch's rate (the scheduler then sets the next one)
        scheduler.step()
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "lr": lr_used, "train_seconds": train_seconds, **stats}
        row["test"] = engine.evaluate(net, epoch_set, eps_ref=epoch_eps, desc=f"epoch {epoch} evaluation", **eval_kw)
        if len(val_set):
            row["val"] = engine.evaluate(net, val_set, desc=f"epoch {epoch} validation", **eval_kw)
        reason = engine.collapse_reason(stats, row["test"]["acc"], ref_metrics["acc"], pipe.num_classes,
                                        args.min_acc_ratio, getattr(args, "max_train_ce", None))
        if reason is not None:  # never kept as the last good state
            fail_run(out, args, history + [{**row, "failed": reason}],
                     f"{reason} (epoch {epoch}){weak_reference_hint(args, ref_metrics, stats)}", resume_path,
                     world)
        history.append(row)
        save_resume(epoch)
        if world.main:
            utils.write_text_atomic(out / "log.jsonl",
                                    "".join(utils.json.dumps(r, sort_keys=True) + "\n" for r in history))
        t = row["test"]
        utils.say(f"epoch {epoch}/{args.epochs}: loss {stats['train_loss']:.4f}, test acc {t['acc']:.4f}, "
              f"rho2 {t['rho2']:.4f}, fgs@1.0 {t['fgs_acc@1.0']:.4f} ({train_seconds:.0f} s train)")
        if after_checkpoint is not None:
            after_checkpoint(steps_done[0])

    weights_sha1 = same_weights_on_every_rank(net, world)
    utils.say(f"final evaluation on {n_eval} test images ...")
    ft_final = engine.evaluate(net, test_set, find_eps_ref=True, desc="final (fine-tuned)", **eval_kw)
    eps = ft_final["own_eps_ref"]
    ref_final = engine.evaluate(ref_net, test_set, eps_ref=eps, desc="final (reference)", **eval_kw)
    ref_final["own_eps_ref"] = ref_metrics["own_eps_ref"] if n_epoch_eval == n_eval else None
    wall = time.perf_counter() - wall_start
    # ρ₂ = 0 for the reference (no image perturbed): the ratio is undefined, not a ZeroDivisionError after training
    rho2_ratio = ft_final["rho2"] / ref_final["rho2"] if ref_final["rho2"] else None
    wall_seconds, reevaluation_seconds = wall, None
    if start_epoch > args.epochs:  # --resume of a finished run: only the final evaluation ran now
        reevaluation_seconds = wall
        try:
            wall_seconds = utils.json.loads((out / "metrics.json").read_text(encoding="utf-8"))["wall_seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no earlier metrics.json: this session's time is all there is
    result = {"model": args.model, "method": args.method, "dataset": args.dataset, "reference": ref_final,
              "finetuned": ft_final, "reference_val": ref_metrics.get("val"),
              "reference_epoch_eval": {k: v for k, v in ref_metrics.items() if k != "val"},
              "advtrain_set": advtrain_info,
              "eps_ref": eps, "rho2_ratio": rho2_ratio, "wall_seconds": wall_seconds,
              "history": history, "data": pipe.source,
              "processes": {"world_size": world.size, "backend": world.backend, "weights_sha1": weights_sha1}}
    if rho2_ratio is None:
        result["rho2_ratio_note"] = "undefined: the reference's rho2 is 0 (DeepFool left every test image unchanged)"
    if reevaluation_seconds is not None:
        result["reevaluation_seconds"] = reevaluation_seconds
    summary = summary_markdown(args, ref_final, ft_final, eps, wall_seconds, pipe.source)
    if not world.main:
        return result
    try:  # final.pt first: the model is never lost to a later failure
        models.save(out / "final.pt", args.model, net, preprocess, metrics=_plain(
            {k: v for k, v in result.items() if k != "history"}), config=_plain(vars(args)),
            arch_args=builder_args(args, pipe), input_shape=pipe.input_shape)
        utils.write_json(out / "metrics.json", result)
        utils.write_text_atomic(out / "summary.md", summary)
        (out / "failed.json").unlink(missing_ok=True)  # a resumed run that failed before has now finished
    except models.WriteError as exc:
        raise SystemExit(f"error: {exc}") from None
    utils.say("\n" + summary + final_legend(eps, epoch_eps))
    return result


RESUME_FREE_ARGS = {"resume", "out", "no_progress", "device", "eval_batch_size", "data_dir", "cache_dir", "no_download",
                    "workers", "eval_cache_mb", "checkpoint_every", "model_flag", "threads"}


def same_weights_on_every_rank(net: torch.nn.Module, world: distributed.World) -> str:
    """The fingerprint of the fine-tuned weights, checked to be the same on every rank (DDP keeps the replicas
    equal bit for bit; a difference would mean that a rank trained differently, and is an error)."""
    prints = world.gather(references.fingerprint(*(t.detach().cpu() for t in net.state_dict().values())))
    if len(set(prints)) > 1:
        raise SystemExit(f"error: the fine-tuned weights differ between the ranks (fingerprints {prints}); the "
                         "processes did not train the same model. Please report this with the run's config.json.")
    return prints[0]


def check_resume_world(state: dict[str, Any], world: distributed.World, path: Path) -> None:
    """Refuse ``--resume`` on another number of processes than the run's: each rank's random state is saved."""
    saved = state.get("world_size", 1)
    if saved != world.size:
        raise SystemExit(f"error: --resume of {path.parent.parent} with {world.size} process(es), but it was saved by "
                         f"{saved}; resume with torchrun --nproc_per_node={saved} (or as a single process if 1).")


def check_resume_args(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """Refuse ``--resume`` with settings that differ from the run's (only the flags in ``RESUME_FREE_ARGS``,
    which do not change the computation, may differ), so a run never mixes configurations."""
    changed = sorted(key for key in set(saved) & set(now) if key not in RESUME_FREE_ARGS  # flags added later: absent
                     and _plain(saved[key]) != _plain(now[key]))
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise SystemExit(f"error: --resume with other settings than the run in {path.parent.parent} ({diffs}); "
                         "resume with the run's own flags (config.json lists them) or start a new --out.")


WEAK_REFERENCE_ACC = 0.5  # below it, most training images are misclassified: Deep Defense's d-term dominates


def weak_reference_hint(args: argparse.Namespace, ref_metrics: dict, stats: dict | None = None) -> str:
    """Why a Deep Defense run from a weak reference diverges, and what to do (empty for other runs): each
    misclassified training image adds λ·exp(d·‖Δx‖/‖x‖) (up to λ·e³⁰), and a weak reference misclassifies most."""
    if args.method not in ("deepdefense", "deepdefense+fgs") or ref_metrics.get("acc", 1.0) >= WEAK_REFERENCE_ACC:
        return ""
    loss = f" (mean training loss {stats['train_loss']:.3g})" if stats and "train_loss" in stats else ""
    return (f"; the reference is weak: test accuracy {ref_metrics['acc']:.1%}, so most images are misclassified "
            f"and each adds the regularizer's term λ·exp(d·‖Δx‖/‖x‖) = {args.lmbda:g}·exp({args.d:g}·‖Δx‖/‖x‖), up "
            f"to {args.lmbda * math.exp(30):.2g}{loss}. Fine-tune a trained reference (more --ref-epochs, or "
            "--reference PATH) rather than an untrained one")


def fail_run(out: Path, args: argparse.Namespace, history: list[dict[str, Any]], reason: str, resume_path: Path,
             world: distributed.World | None = None):
    """Mark a diverged run as failed (``summary.md``, ``failed.json``, ``log.jsonl``) and exit with status 1;
    the resume checkpoint stays at the last good epoch (or the reference, before the first). Every rank reaches
    this at the same step (the failure is agreed on by a collective); rank 0 writes and prints, and the others
    wait for it at a barrier before they exit, so torchrun does not stop rank 0 halfway."""
    world = world or distributed.World()
    last = resume_path if resume_path.exists() else "none (the reference; no epoch finished)"
    message = (f"error: the run diverged: {reason}. Marked FAILED in {out / 'summary.md'}; the last good state "
               f"is {last}. Lower --lr or --lmbda and start again in a new --out.")
    if world.main:
        utils.write_text_atomic(out / "summary.md", f"# {args.model} / {args.method}: FAILED\n\n- diverged: "
                                f"{reason}\n- last good state: {last}\n")
        utils.write_json(out / "failed.json", {"failed": reason, "history": history})  # metrics.json: finished
        utils.write_text_atomic(out / "log.jsonl",
                                "".join(utils.json.dumps(r, sort_keys=True) + "\n" for r in history))
        if world.distributed:
            print(message, file=sys.stderr, flush=True)
    world.barrier()
    raise SystemExit(1 if world.distributed else message)


def _plain(obj: Any) -> Any:
    """Only str/int/float/bool/None (and lists/dicts of them), as ``weights_only`` loading wants."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def model_named(argv: list[str]) -> str | None:
    """The model named in ``argv`` (a built-in architecture or ``module:function``), for ``finetune.py MODEL
    --help``."""
    return next((a for a in argv if a in models.ARCHITECTURES or models.is_user_model(a)), None)




def cli(argv: list[str] | None = None, after_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """``python train/finetune.py ARGS``: :func:`main` with one-line errors."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(get_args_parser(model=model_named(argv)).parse_args(argv), after_checkpoint)
    except models.WriteError as exc:  # a failed write anywhere (resume checkpoint, log.jsonl): one line
        raise SystemExit(f"error: {exc}") from None
    except data_lib.DataError as exc:  # data found unreadable while reading it (an ImageNet val/ without images)
        raise SystemExit(f"error: {data_lib.error_line(exc)}") from None
    except SystemExit as exc:  # under torchrun the other ranks met the same check: rank 0 alone says it
        if distributed.launched_by_torchrun() and os.environ.get("RANK", "0") != "0" and exc.code not in (0, None):
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    cli()

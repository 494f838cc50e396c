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
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from revnet_app import models
from revnet_app.train import normalization
from revnet_app.train import sources
from revnet_app.train import distributed, engine, library_attacks, loaders, methods, saturation, utils
from revnet_app.train import finetune_report as report
from revnet_app.train import finetune_setup as setup_lib
from revnet_app.train import pipeline as pipeline_lib
from revnet_app.train.cli import check_device, valid_devices  # noqa: F401  (the tests' entry points)
from revnet_app.train.finetune_args import check_args, get_args_parser  # noqa: F401  (the command line)
from revnet_app.train.finetune_setup import eval_sets, get_reference, run_dtype, train_batches  # noqa: F401
from revnet_app.train.references import fingerprint  # noqa: F401
from revnet_app.train.run_state import RunState, plain


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


@dataclasses.dataclass
class Context:
    """What every phase of a run reads: the flags, the processes, the output paths, the data and the evaluation
    sets with their DeepFool/FGS settings (``eval_kw``)."""

    args: argparse.Namespace
    world: distributed.World
    device: torch.device
    out: Path
    pipe: Any
    config: dict[str, Any]
    after_checkpoint: Callable[[int], None] | None = None
    preprocess: dict | None = None
    sets: tuple = ()
    eval_kw: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def resume_path(self) -> Path:
        return self.out / "resume" / "checkpoint.pt"


def run(args: argparse.Namespace, world: distributed.World, device: torch.device,
        after_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The whole run on this process (rank ``world.rank`` of ``world.size``; rank 0 alone prints and writes):
    setup → reference → epochs → final evaluation."""
    wall_start = time.perf_counter()
    ctx = setup(args, world, device, after_checkpoint)
    ref_net = reference(ctx)
    net, method, optimizer, scheduler = build_training(ctx, ref_net)
    state = resume_or_start(ctx, ref_net, net, optimizer, scheduler)
    train_set, train_pre, advtrain_info = training_set(ctx, method, ref_net)
    only_final = state.start_epoch > args.epochs  # --resume of a finished run: only the final evaluation runs
    train_epochs(ctx, state, net, method, optimizer, scheduler, train_set, train_pre)
    return final_evaluation(ctx, state, net, ref_net, advtrain_info, wall_start, only_final)


def setup(args, world, device, after_checkpoint) -> Context:
    """The output folders (checked writable now, not after training), the configuration and the data."""
    out = Path(args.out)
    ctx = Context(args, world, device, out, pipe=None, config={}, after_checkpoint=after_checkpoint)
    if ctx.resume_path.exists() and not args.resume:
        raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it or choose another --out.")
    if world.main:  # a file in the way, a read-only folder or a full disk: refused now, not later
        utils.prepare_dir(out, "--out")
        if not args.reference:
            utils.prepare_dir(args.cache_dir, "--cache-dir")
    world.barrier()
    ctx.config = {"args": vars(args), "device": str(device), "world_size": world.size, "backend": world.backend,
                  **utils.environment()}
    utils.say("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())))
    try:
        ctx.pipe = pipeline_lib.load_pipeline(args.dataset, args.data_dir, download=not args.no_download,
                                              val_size=args.val_size, train_samples=args.train_samples,
                                              seed=args.seed, crop=args.crop_size)
    except sources.DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    ctx.config["data"] = ctx.pipe.source
    utils.say(f"data: {ctx.pipe.source}; training on {len(ctx.pipe.train_set)} images, "
              f"{len(ctx.pipe.val_set)} held out")
    return ctx


def reference(ctx: Context) -> torch.nn.Module:
    """The reference network (given, pretrained, cached or trained now), its preprocessing, and the evaluation
    sets and settings that follow from them."""
    args, world, pipe = ctx.args, ctx.world, ctx.pipe
    utils.seed_everything(args.seed)
    try:
        ref_net, ctx.preprocess, ref_origin = setup_lib.get_reference_on_every_rank(args, pipe, ctx.device, world)
    except ValueError as exc:  # a user's --model that cannot be built
        raise SystemExit(f"error: {exc}") from None
    ref_net = ref_net.to(dtype=run_dtype(args))  # a float32 --reference or cache in a --dtype float64 run
    ctx.config["reference"] = ref_origin
    utils.say(f"reference: {ref_origin}")
    if world.rank:  # Dropout masks: each rank its own stream (rank 0's is the single-process one)
        torch.manual_seed(args.seed + 1_000_003 * world.rank)
    ctx.sets = setup_lib.eval_sets(args, pipe, ctx.preprocess, ctx.device, world)
    clip = normalization.pixel_range(ctx.preprocess, pipe.input_shape, pipe.raw_max) if args.clip else None
    # top-K DeepFool classes; K >= the number of classes (a small ImageFolder) means all of them
    candidates = args.candidates if args.candidates and args.candidates < pipe.num_classes else None
    ctx.eval_kw = dict(max_iter=args.eval_max_iter, overshoot=args.overshoot, batch_size=args.eval_batch_size,
                       clip=clip, candidates=candidates, progress=not args.no_progress and world.main, world=world)
    return ref_net


def build_training(ctx: Context, ref_net: torch.nn.Module):
    """The network to fine-tune, its ``Method``, the SGD optimizer and the step-decay scheduler."""
    args = ctx.args
    net = setup_lib.build_network(args, ctx.pipe).to(ctx.device, run_dtype(args))
    modules_with_params = [name for name, m in net.named_modules() if name and any(True for _ in m.parameters(False))]
    all_modules = {name for name, _ in net.named_modules() if name}
    if args.reg_layers and not set(args.reg_layers) <= all_modules:
        raise SystemExit(f"error: --reg-layers {args.reg_layers}: {args.model}'s modules with parameters are "
                         f"{modules_with_params} (print(models.build({args.model!r})) shows them).")
    try:  # the valid pixel box and the pixel → input factor: PGD-AT's and TRADES' radius is in pixels
        method = methods.build(args.method, {
            **vars(args), "clip": ctx.eval_kw["clip"], "candidates": ctx.eval_kw["candidates"],
            "box": saturation.pixel_box(ctx.preprocess, ctx.pipe.raw_max),
            "pixel_factor": library_attacks.pixel_factor(ctx.preprocess, ctx.pipe.raw_max)})
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.reg_layers and not method.uses("reg_layers"):
        raise SystemExit("error: --reg-layers applies to the Deep Defense methods only.")
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    milestones = [args.epochs - args.lr_drop_epochs] if args.lr_drop_epochs else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.5)
    return net, method, optimizer, scheduler


def resume_or_start(ctx: Context, ref_net, net, optimizer, scheduler) -> RunState:
    """``--resume``'s state (checked before ``config.json`` is written: a refused resume changes nothing), or a
    new one that starts from the reference's weights and evaluation."""
    args, world = ctx.args, ctx.world
    state = None
    if args.resume and ctx.resume_path.exists():
        state = RunState.load(ctx.resume_path, net, ctx.device, vars(args), world)
    if world.main:
        try:
            utils.write_json(ctx.out / "config.json", ctx.config)
        except models.WriteError as exc:
            raise SystemExit(f"error: {exc}") from None
    if state is not None:
        state.restore(net, optimizer, scheduler, world)
        utils.say(f"resuming {ctx.out} after {state.where()}")
    else:
        net.load_state_dict(ref_net.state_dict())
        _, epoch_set, val_set = ctx.sets
        n_epoch_eval = int(world.sum([len(epoch_set)])[0])
        utils.say(f"evaluating the reference on {n_epoch_eval} test images ...")
        ref_metrics = engine.evaluate(net, epoch_set, find_eps_ref=True, desc="reference", **ctx.eval_kw)
        if len(val_set):
            ref_metrics["val"] = engine.evaluate(net, val_set, desc="reference (validation)", **ctx.eval_kw)
        utils.say(f"reference: acc {ref_metrics['acc']:.4f}, rho2 {ref_metrics['rho2']:.4f}, "
                  f"eps_ref {ref_metrics['own_eps_ref']:.4g}")
        state = RunState(args=vars(args), reference_metrics=ref_metrics)
    utils.say(report.epoch_legend(state.reference_metrics["own_eps_ref"]))
    return state


def training_set(ctx: Context, method, ref_net):
    """The images to train on, their preprocessing (``None``: already preprocessed) and the method's record of
    a set it made of its own (Adv. Train I's DeepFool examples), else ``None``."""
    args, pipe = ctx.args, ctx.pipe
    if not method.needs_train_tensors:
        return pipe.train_set, ctx.preprocess, None
    train_x, train_y = setup_lib.materialize(pipe.train_set if pipe.in_memory else pipe.train_eval_set,
                                             ctx.preprocess, ctx.device, args.eval_batch_size,
                                             args.eval_cache_mb << 20, args.method, run_dtype(args))
    train_x, train_y, info = method.prepare(train_x, train_y, ref_net=ref_net, out=ctx.out,
                                            batch_size=args.eval_batch_size)
    return loaders.TensorImages(train_x, train_y), None, info


def train_epochs(ctx: Context, state: RunState, net, method, optimizer, scheduler, train_set, train_pre) -> None:
    """Every epoch left: train (checkpointing every ``--checkpoint-every`` steps), evaluate, check for a
    collapse, then save the state and the log."""
    args, world = ctx.args, ctx.world
    _, epoch_set, val_set = ctx.sets
    epoch_eps = state.reference_metrics["own_eps_ref"]  # fixed for the whole run so the curves are comparable
    for epoch in range(state.start_epoch, args.epochs + 1):
        mid = state.mid_epoch
        start_step = mid["step"] if mid and mid["epoch"] == epoch else 0
        batches, num_left, gen = setup_lib.train_batches(train_set, train_pre, args, ctx.device, epoch, start_step,
                                                         world)
        totals = None
        if start_step:
            gen.set_state(mid["generator"])
            torch.set_rng_state(mid["rng"][world.rank] if isinstance(mid["rng"], list) else mid["rng"])
            # the saved sums are over every rank: rank 0 carries them on, the others start from zero
            totals = mid["totals"] if world.main else None
        total_steps = start_step + num_left

        def on_step(step: int, running: dict, epoch=epoch, gen=gen, total_steps=total_steps) -> None:
            state.steps_done += 1
            if args.checkpoint_every and step % args.checkpoint_every == 0 and step < total_steps:
                keys = sorted(running)
                summed = dict(zip(keys, world.sum([running[k] for k in keys])))
                state.mid_epoch = {"epoch": epoch, "step": step, "totals": summed, "generator": gen.get_state(),
                                   "rng": world.gather(torch.get_rng_state())}
                state.save(ctx.resume_path, net, optimizer, scheduler, world)
                if ctx.after_checkpoint is not None:
                    ctx.after_checkpoint(state.steps_done)

        t0 = time.perf_counter()
        try:
            stats = engine.train_one_epoch(
                net, method, optimizer, batches, generator=gen, world=world, amp=args.amp,
                progress=engine.EpochProgress(desc=f"epoch {epoch}/{args.epochs}",
                                              bar=not args.no_progress and world.main, num_batches=num_left,
                                              start_step=start_step, totals=totals, on_step=on_step),
            )
        except engine.NonFiniteLossError as exc:
            report.fail_run(ctx.out, args, state.history,
                            f"{exc} (epoch {epoch}){report.weak_reference_hint(args, state.reference_metrics)}",
                            ctx.resume_path, world)
        state.mid_epoch = None
        lr_used = optimizer.param_groups[0]["lr"]  # this epoch's rate (the scheduler then sets the next one)
        scheduler.step()
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "lr": lr_used, "train_seconds": train_seconds, **stats}
        row["test"] = engine.evaluate(net, epoch_set, eps_ref=epoch_eps, desc=f"epoch {epoch} evaluation",
                                      **ctx.eval_kw)
        if len(val_set):
            row["val"] = engine.evaluate(net, val_set, desc=f"epoch {epoch} validation", **ctx.eval_kw)
        reason = engine.collapse_reason(stats, row["test"]["acc"], state.reference_metrics["acc"],
                                        ctx.pipe.num_classes, args.min_acc_ratio, getattr(args, "max_train_ce", None))
        if reason is not None:  # never kept as the last good state
            hint = report.weak_reference_hint(args, state.reference_metrics, stats)
            report.fail_run(ctx.out, args, state.history + [{**row, "failed": reason}],
                            f"{reason} (epoch {epoch}){hint}", ctx.resume_path, world)
        state.history.append(row)
        state.epoch = epoch
        state.save(ctx.resume_path, net, optimizer, scheduler, world)
        if world.main:
            utils.write_text_atomic(ctx.out / "log.jsonl", "".join(
                utils.json.dumps(r, sort_keys=True) + "\n" for r in state.history))
        t = row["test"]
        utils.say(f"epoch {epoch}/{args.epochs}: loss {stats['train_loss']:.4f}, test acc {t['acc']:.4f}, "
                  f"rho2 {t['rho2']:.4f}, fgs@1.0 {t['fgs_acc@1.0']:.4f} ({train_seconds:.0f} s train)")
        if ctx.after_checkpoint is not None:
            ctx.after_checkpoint(state.steps_done)


def final_evaluation(ctx: Context, state: RunState, net, ref_net, advtrain_info, wall_start: float,
                     only_final: bool) -> dict[str, Any]:
    """Both models on the whole evaluation set at the fine-tuned model's ε_ref, as in the paper's Table 1; rank
    0 writes ``final.pt`` (first: the model is never lost to a later failure), ``metrics.json`` and
    ``summary.md``."""
    args, world, pipe, out = ctx.args, ctx.world, ctx.pipe, ctx.out
    test_set, epoch_set, _ = ctx.sets
    n_eval, n_epoch_eval = int(world.sum([len(test_set)])[0]), int(world.sum([len(epoch_set)])[0])
    ref_metrics = state.reference_metrics
    weights_sha1 = report.same_weights_on_every_rank(net, world)
    utils.say(f"final evaluation on {n_eval} test images ...")
    ft_final = engine.evaluate(net, test_set, find_eps_ref=True, desc="final (fine-tuned)", **ctx.eval_kw)
    eps = ft_final["own_eps_ref"]
    ref_final = engine.evaluate(ref_net, test_set, eps_ref=eps, desc="final (reference)", **ctx.eval_kw)
    ref_final["own_eps_ref"] = ref_metrics["own_eps_ref"] if n_epoch_eval == n_eval else None
    wall = time.perf_counter() - wall_start
    # ρ₂ = 0 for the reference (no image perturbed): the ratio is undefined, not a ZeroDivisionError after training
    rho2_ratio = ft_final["rho2"] / ref_final["rho2"] if ref_final["rho2"] else None
    wall_seconds, reevaluation_seconds = wall, None
    if only_final:  # --resume of a finished run: only the final evaluation ran now
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
              "history": state.history, "data": pipe.source,
              "processes": {"world_size": world.size, "backend": world.backend, "weights_sha1": weights_sha1}}
    if rho2_ratio is None:
        result["rho2_ratio_note"] = "undefined: the reference's rho2 is 0 (DeepFool left every test image unchanged)"
    if reevaluation_seconds is not None:
        result["reevaluation_seconds"] = reevaluation_seconds
    summary = report.summary_markdown(args, ref_final, ft_final, eps, wall_seconds, pipe.source)
    if not world.main:
        return result
    try:  # final.pt first: the model is never lost to a later failure
        models.save(out / "final.pt", args.model, net, ctx.preprocess, metrics=plain(
            {k: v for k, v in result.items() if k != "history"}), config=plain(vars(args)),
            arch_args=setup_lib.builder_args(args, pipe), input_shape=pipe.input_shape)
        utils.write_json(out / "metrics.json", result)
        utils.write_text_atomic(out / "summary.md", summary)
        (out / "failed.json").unlink(missing_ok=True)  # a resumed run that failed before has now finished
    except models.WriteError as exc:
        raise SystemExit(f"error: {exc}") from None
    utils.say("\n" + summary + report.final_legend(eps, ref_metrics["own_eps_ref"]))
    return result


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
    except sources.DataError as exc:  # data found unreadable while reading it (an ImageNet val/ without images)
        raise SystemExit(f"error: {sources.error_line(exc)}") from None
    except SystemExit as exc:  # under torchrun the other ranks met the same check: rank 0 alone says it
        if distributed.launched_by_torchrun() and os.environ.get("RANK", "0") != "0" and exc.code not in (0, None):
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    cli()

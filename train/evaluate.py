"""Evaluate any checkpoint: accuracy, DeepFool ρ₂, ε_ref and FGS accuracy at 0.2/0.5/1.0·ε_ref; optionally
AutoAttack-L2 accuracy (``--autoattack-samples``), the FMN-L2 median ‖Δx‖/‖x‖ (``--fmn-samples``), the
box-constrained DDN and C&W medians (``--minimal-norm-samples``) and the saturation check
(``--saturation-samples``; a saturated model gets a warning line naming the columns it can fool).

Example::

    python train/evaluate.py runs/lenet-deepdefense-s0/final.pt --data-dir ../shared/data --eps-ref 0.12
    torchrun --nproc_per_node=4 train/evaluate.py runs/resnet18-deepdefense-s0/final.pt --data-dir IMAGENET_DIR

Without ``--eps-ref`` the model's own ε_ref is found by bisection. Metrics are printed and written as JSON
(``--output``, default next to the checkpoint: ``<checkpoint>.eval.json``). Under ``torchrun`` each process
evaluates its shard of the images (every image on one process) and every count is summed over them, so the
numbers are those of one process; rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch


from revnet_app.train import normalization
from revnet_app.train import sources
from revnet_app.train import distributed  # noqa: E402
from revnet_app.train import engine  # noqa: E402
from revnet_app.train import evaluation_columns  # noqa: E402
from revnet_app.train import library_attacks  # noqa: E402
from revnet_app.train import pipeline as pipeline_lib  # noqa: E402
from revnet_app.train import utils  # noqa: E402
from revnet_app.train.cli import add_device_flag, check_device, finite_float  # noqa: E402
from revnet_app.train.loaders import EvalSet  # noqa: E402

from revnet_app import models  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a revnet checkpoint's accuracy and robustness.", add_help=add_help,
                                formatter_class=utils.HelpFormatter)
    p.add_argument("checkpoint", help="a .pt file written by train/finetune.py (final.pt or a cached reference)")
    p.add_argument("--eps-ref", type=finite_float, default=None,
                   help="ε_ref for the FGS accuracies (e.g. another model's); default: this model's own")
    p.add_argument("--dataset", default=None, choices=pipeline_lib.DATASETS,
                   help="dataset (default: the one the checkpoint was fine-tuned on, else mnist)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST/Fashion-MNIST: torchvision layout (default ./data or the embedded subset); CIFAR-10: "
                        "DIR/cifar-10-batches-py/; ImageNet: DIR/val/<class>/*.JPEG (and DIR/train/)")
    p.add_argument("--no-download", action="store_true", help="never download (offline): fall back to the embedded subset")
    p.add_argument("--model", default=None, metavar="MODULE:FUNCTION",
                   help="rebuild a checkpoint of a user's own model with this builder (a checkpoint never imports "
                        "code by itself)")
    p.add_argument("--crop-size", type=int, default=None,
                   help="ImageNet crop (default: the checkpoint's input size)")
    utils.add_eval_subset_flags(p)
    p.add_argument("--candidates", type=int, default=None,
                   help="DeepFool over the top-K classes (default: the checkpoint's fine-tuning setting; 0: all)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--eval-cache-mb", type=int, default=2048,
                   help="a test set that fits in this many MB is kept in memory for the ε_ref bisection; a larger "
                        "one is streamed again for every step (bounded memory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--eval-max-iter", type=int, default=50, help="DeepFool iterations for ρ₂")
    p.add_argument("--overshoot", type=finite_float, default=0.02, help="DeepFool overshoot")
    p.add_argument("--eval-batch-size", type=int, default=500, help="batch size of the attacks")
    p.add_argument("--clip", action="store_true", help="clip FGS images to the valid pixel range (default: not clipped)")
    add_device_flag(p)
    p.add_argument("--output", default=None, help="JSON file for the metrics (default <checkpoint>.eval.json)")
    library_attacks.add_flags(p, autoattack_samples=0, fmn_samples=0, eps="--autoattack-eps")
    p.add_argument("--autoattack-eps", type=finite_float, default=None,
                   help="L2 radius of AutoAttack in network-input units (ρ₂'s space), e.g. the reference's median "
                        "DeepFool ‖Δx‖, as table1.py uses; required with --autoattack-samples")
    evaluation_columns.add_flags(p, samples=0, eps="--saturation-eps")
    p.add_argument("--saturation-eps", type=finite_float, default=None,
                   help="L2 radius of the saturation check's PGD in network-input units (default: this model's "
                        "ρ₂ times the median ‖x‖ of the checked images, about the median ‖Δx‖ DeepFool needs)")
    return p


MEANINGS = {
    "n": "number of evaluated test images",
    "acc": "test accuracy (fraction correct)",
    "rho2": "mean ‖Δx‖/‖x‖ of DeepFool over the evaluated images (higher = more robust)",
    "fooling_rate": "fraction of the images DeepFool managed to push to another label",
    "mean_iterations": "mean DeepFool iterations per image",
    "own_eps_ref": "this model's ε_ref: the smallest FGS step that misclassifies 50% of the images",
    "eps_ref_used": "the ε_ref the FGS accuracies below use (--eps-ref if given, else this model's own)",
    "eval_seconds": "seconds the evaluation took",
    "checkpoint": "the evaluated file",
    "arch": "architecture",
    "data": "where the test images came from",
    "dataset": "the dataset evaluated on",
    "aa_acc": "accuracy under AutoAttack-L2 at --autoattack-eps, [0, 1] box (higher = more robust)",
    "aa_n": "images attacked with AutoAttack",
    "fmn_median": "median ‖Δx‖/‖x‖ of foolbox's FMN-L2, [0, 1] box (higher = more robust)",
    "fmn_success_rate": "fraction of the images FMN managed to push to another label",
    "fmn_n": "images attacked with FMN",
    **evaluation_columns.MEANINGS,
    "unreliable_columns": "columns that follow the cross-entropy gradient, unreliable on this saturated model",
}


def meaning(key: str) -> str:
    """What a key of :func:`engine.evaluate`'s result (and of the ``.eval.json`` file) means."""
    if key.startswith("fgs_acc@"):
        return f"test accuracy under FGS at {key.split('@', 1)[1]}·eps_ref_used (higher = more robust)"
    return MEANINGS.get(key, "")


def describe(result: dict[str, Any]) -> str:
    """One line per metric: ``key: value — meaning``; floats with 4 significant digits (the JSON file keeps all)."""
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    return "\n".join(f"{k}: {fmt(v)}" + (f" — {meaning(k)}" if meaning(k) else "") for k, v in result.items())


def main(args: argparse.Namespace) -> dict[str, Any]:
    parser = get_args_parser()
    for name in ["eval_samples"]:
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.eval_max_iter < 1 or args.eval_batch_size < 1:
        parser.error("--eval-max-iter and --eval-batch-size must be at least 1")
    # finite_float refuses NaN/inf at parsing; these tests are written so that NaN fails them too
    if args.eps_ref is not None and not (math.isfinite(args.eps_ref) and args.eps_ref > 0):
        parser.error(f"--eps-ref must be a positive finite number, got {args.eps_ref}")
    if not (math.isfinite(args.overshoot) and args.overshoot >= 0):
        parser.error(f"--overshoot must be a non-negative finite number, got {args.overshoot}")
    if args.autoattack_samples < 0 or args.fmn_samples < 0 or args.fmn_steps < 1:
        parser.error("--autoattack-samples and --fmn-samples must not be negative, --fmn-steps at least 1")
    if args.fmn_init_steps < 0:
        parser.error("--fmn-init-steps must not be negative")
    evaluation_columns.check_flags(args, parser)
    if args.saturation_eps is not None and not args.saturation_eps > 0:
        parser.error(f"--saturation-eps must be positive, got {args.saturation_eps}")
    if args.autoattack_samples and not (args.autoattack_eps and args.autoattack_eps > 0):
        parser.error("--autoattack-samples needs --autoattack-eps (a positive L2 radius in network-input units)")
    check_device(args.device, parser)
    if distributed.launched_by_torchrun():  # each process evaluates its shard; the counts are summed
        world, device = distributed.init(args.device)
    else:
        world, device = distributed.World(), utils.resolve_device(args.device)
    try:
        return run(args, parser, world, device)
    finally:
        world.close()


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, world: distributed.World,
        device: torch.device) -> dict[str, Any]:
    """The evaluation on this process (under torchrun: its shard of the images; rank 0 prints and writes)."""
    utils.say("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())))
    output = Path(args.output or f"{args.checkpoint}.eval.json")
    if output.is_dir():
        parser.error(f"--output {output} is a folder; pass a file name such as {output / 'eval.json'}")
    if world.main:
        utils.prepare_dir(output.parent, "the folder of --output")  # fail now, not after the evaluation
    if args.eval_samples < 0 or args.workers < 0 or (args.candidates or 0) < 0:
        parser.error("--eval-samples, --workers and --candidates must not be negative")
    try:
        net, ckpt = models.load(args.checkpoint, arch=args.model, map_location=device)
        config = ckpt.get("config") or {}
        dataset = args.dataset or config.get("dataset") or "mnist"
        shape = models.input_shape_of(ckpt)
        crop = args.crop_size or (shape[-1] if shape and dataset == "imagenet" else 224)
        pipe = pipeline_lib.load_pipeline(dataset, args.data_dir, download=not args.no_download, crop=crop)
    except (models.CheckpointError, sources.DataError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if shape is not None and tuple(shape) != tuple(pipe.input_shape):
        raise SystemExit(f"error: {args.checkpoint} takes inputs of shape {tuple(shape)}, but --dataset {dataset} "
                         f"gives {tuple(pipe.input_shape)}; pass the dataset it was trained on (--dataset"
                         f"{' ' + config['dataset'] if config.get('dataset') else ' ...'}) or the matching --crop-size.")
    from torch.utils.data import Subset

    n = min(args.eval_samples or len(pipe.test_set), len(pipe.test_set))
    idx = (pipeline_lib.balanced_subset(pipe.test_targets, n, args.eval_subset_seed).tolist()
           if args.eval_subset == "balanced" and args.eval_samples else range(n))
    pre = ckpt["preprocess"]
    per_image = 5 * math.prod(pipe.input_shape)
    data = EvalSet(Subset(pipe.test_set, distributed.shard(idx, world)), lambda raw: normalization.preprocess(raw, pre).to(device),
                   args.eval_batch_size, device=device, num_workers=args.workers, pin_memory=device.type == "cuda",
                   cache_bytes=args.eval_cache_mb << 20, bytes_per_image=per_image)
    clip = normalization.pixel_range(pre, pipe.input_shape, pipe.raw_max) if args.clip else None
    candidates = args.candidates if args.candidates is not None else config.get("candidates")
    candidates = candidates if candidates and candidates < pipe.num_classes else None
    result = engine.evaluate(
        net, data, eps_ref=args.eps_ref, find_eps_ref=args.eps_ref is None, max_iter=args.eval_max_iter,
        overshoot=args.overshoot, clip=clip, batch_size=args.eval_batch_size, candidates=candidates,
        progress=not args.no_progress and world.main, world=world,
    )
    if world.main and (args.autoattack_samples or args.fmn_samples):
        first = EvalSet(Subset(pipe.test_set, list(idx)[:max(args.autoattack_samples, args.fmn_samples)]),
                        lambda raw: normalization.preprocess(raw, pre).to(device), args.eval_batch_size, device=device)
        result.update(library_attacks.metrics(
            net, first, pre, pipe.raw_max, autoattack_samples=args.autoattack_samples,
            autoattack_eps=args.autoattack_eps, fmn_samples=args.fmn_samples, fmn_steps=args.fmn_steps,
            fmn_init_steps=args.fmn_init_steps, seed=args.attack_seed, progress=not args.no_progress))
    if world.main and (args.minimal_norm_samples or args.saturation_samples):
        first = EvalSet(Subset(pipe.test_set, list(idx)[:max(args.minimal_norm_samples, args.saturation_samples)]),
                        lambda raw: normalization.preprocess(raw, pre).to(device), args.eval_batch_size, device=device)
        eps = args.saturation_eps or evaluation_columns.default_eps(result["rho2"], first, args.saturation_samples)
        result.update(evaluation_columns.columns(net, first, pre, pipe.raw_max, args, eps=eps, name=ckpt["arch"],
                                                 progress=not args.no_progress))
        if result.get("saturated"):
            result["unreliable_columns"] = [k for k in ("fmn_median", "ddn_median") if k in result]
            print(result["saturation_warning"], flush=True)
    splits_source = pipe.source
    result.update({"checkpoint": str(args.checkpoint), "arch": ckpt["arch"], "dataset": dataset,
                   "data": splits_source})
    if world.size > 1:
        result["processes"] = world.size
    if not world.main:
        return result
    print(describe(result), flush=True)  # before writing: a failed write does not lose the results
    try:
        utils.write_json(output, result)
    except models.WriteError as exc:
        raise SystemExit(f"error: {exc} The results are printed above.") from None
    print(f"written: {output}")
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())

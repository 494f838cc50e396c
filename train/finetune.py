"""Fine-tune an MNIST or Fashion-MNIST classifier with Deep Defense (or a baseline) and evaluate its
robustness.

Example::

    python train/finetune.py lenet --data-dir ../shared/data --out runs/lenet-dd

Without ``--reference`` a reference model is trained first with plain cross-entropy (cached under
``--cache-dir``, keyed by architecture, data, recipe and seed, and reused). The reference and every epoch of the
fine-tuned model are evaluated (accuracy, DeepFool ρ₂, FGS accuracy at fractions of the reference's ε_ref), and
the run ends with a before/after table at the fine-tuned model's ε_ref, as in the paper's Table 1.

The run directory ``--out`` holds ``config.json`` (flags, git commit, package versions, data source),
``log.jsonl`` (one line per epoch), ``metrics.json`` and ``summary.md`` (the final table), ``final.pt`` (the
fine-tuned model, readable with ``torch.load(weights_only=True)`` / ``models.load``) and ``resume/checkpoint.pt``
(written atomically after every epoch; ``--resume`` continues from it).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data as data_lib  # noqa: E402
import engine  # noqa: E402
import utils  # noqa: E402
from methods import LABELS, METHODS  # noqa: E402

import models  # noqa: E402
import revnet  # noqa: E402

METHOD_HELP = (
    "deepdefense: CE + the DeepFool-based regularizer (the paper's method); "
    "clean: CE only, same recipe; "
    "advtrain-deepfool: Adv. Train I, CE on DeepFool examples generated once from the reference (see --advtrain-set); "
    "advtrain-fgs: Adv. Train II, alpha*CE(x) + (1-alpha)*CE(x + eps*sign(grad)) with online FGS examples; "
    "parseval: Parseval training, CE + a retraction of 30%% of the weight rows towards orthonormality after "
    "every step; deepdefense+fgs: alpha*CE(x) + (1-alpha)*CE(x_fgs) + the Deep Defense regularizer"
)


def finite_float(text: str) -> float:
    """argparse ``type`` of every float flag: NaN and ±inf (also overflowing literals such as 1e999) are refused
    here, so argparse names the flag in its one-line error; the ranges are checked after parsing."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def valid_devices() -> list[str]:
    """The ``--device`` values that work on this machine."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return names


def check_device(name: str | None, parser: argparse.ArgumentParser) -> None:
    """``parser.error`` (one line listing the valid devices) unless ``name`` is None or in :func:`valid_devices`."""
    if name is None or name in valid_devices():
        return
    hint = "" if torch.cuda.is_available() else " (CUDA is not available here)"
    parser.error(f"--device {name!r} is not a valid device; choose one of: {', '.join(valid_devices())}{hint}")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Deep Defense fine-tuning on MNIST or Fashion-MNIST (reference training, fine-tuning, "
                    "evaluation).",
        add_help=add_help,
        formatter_class=utils.HelpFormatter,
    )
    p.add_argument("model", help=f"architecture: {', '.join(models.ARCHITECTURES)}")
    p.add_argument("--method", default="deepdefense", choices=METHODS, help=METHOD_HELP)
    p.add_argument("--dataset", default="mnist", choices=data_lib.DATASETS, help="dataset (torchvision)")
    p.add_argument("--data-dir", default=None,
                   help="folder in torchvision layout (DIR/MNIST/raw/, DIR/FashionMNIST/raw/); default ./data, "
                        "downloading if possible, else for MNIST the embedded 5,000-image subset, for Fashion-MNIST "
                        "the files of `apt-get install dataset-fashion-mnist` (copied into ./data)")
    p.add_argument("--no-download", action="store_true",
                   help="never download: without MNIST on disk, use the embedded subset (offline tests)")
    p.add_argument("--train-samples", type=int, default=0,
                   help="fine-tune (and train the reference) on a seeded random N of the training images (0: all)")
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<method>-s<seed>)")
    p.add_argument("--min-acc-ratio", type=finite_float, default=engine.MIN_ACC_RATIO,
                   help="divergence rule: an epoch whose test accuracy falls below this fraction of the reference's "
                        "(on the same images), or whose mean training cross-entropy exceeds 10·ln(classes), marks the "
                        "run FAILED (exit status 1) and is not kept as the last good state")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch (starts fresh if there is none)")
    p.add_argument("--reference", default=None,
                   help="checkpoint of the reference model to fine-tune (default: train one, cached in --cache-dir)")
    p.add_argument("--cache-dir", default="runs/references", help="where trained reference models are cached")
    p.add_argument("--epochs", type=int, default=None,
                   help="fine-tuning epochs (default on MNIST: lenet 10, mlp 60, chosen on a validation split; "
                        "resnet18-mnist 3, untuned; "
                        "on Fashion-MNIST: lenet 3, mlp 5; see README)")
    p.add_argument("--lr", type=finite_float, default=None,
                   help="fine-tuning learning rate (default on MNIST: lenet 5e-3, mlp 4e-2, resnet18-mnist 1e-3 "
                        "(untuned), Adv. Train I half of "
                        "that; on Fashion-MNIST: lenet 2e-3, mlp 5e-3 for every method)")
    p.add_argument("--lr-drop-epochs", type=int, default=1, help="halve the learning rate for the last N epochs")
    p.add_argument("--momentum", type=finite_float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=finite_float, default=5e-4, help="SGD weight decay")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size")
    p.add_argument("--lmbda", type=finite_float, default=15.0, help="λ, weight of the Deep Defense regularizer")
    p.add_argument("--c", type=finite_float, default=25.0, help="c: exp(-c·‖Δx‖/‖x‖) for correctly classified samples")
    p.add_argument("--d", type=finite_float, default=5.0, help="d: exp(d·‖Δx‖/‖x‖) for misclassified samples")
    p.add_argument("--max-iter", type=int, default=5, help="DeepFool iterations inside the training loss")
    p.add_argument("--overshoot", type=finite_float, default=0.02, help="DeepFool overshoot (training and evaluation)")
    p.add_argument("--reg-layers", nargs="+", default=None, metavar="MODULE",
                   help="Deep Defense: only these modules of the network (dotted names as in "
                        "net.named_modules(), e.g. 0 for LeNet's conv1 or layer3.1.conv2 in a ResNet; lenet: conv1 0, "
                        "conv2 2, fc1 5, fc2 7) receive the regularizer's gradient "
                        "(the paper's Figure 4); the CE gradient reaches every layer. Default: all layers")
    p.add_argument("--alpha", type=finite_float, default=0.5,
                   help="advtrain-fgs, deepdefense+fgs: weight of the clean CE (Goodfellow et al.: 0.5)")
    p.add_argument("--fgs-eps", type=finite_float, default=None,
                   help="advtrain-fgs, deepdefense+fgs: FGS step of the training examples, in network-input units "
                        "(x/255 - mean); default chosen on a validation split (see README)")
    p.add_argument("--parseval-beta", type=finite_float, default=None,
                   help="parseval: retraction step beta (Cisse et al.: 1e-4 for MNIST); default chosen on a "
                        "validation split (see README)")
    p.add_argument("--parseval-fraction", type=finite_float, default=0.3,
                   help="parseval: fraction of each weight's rows retracted after every step")
    p.add_argument("--advtrain-set", default="perturbed", choices=("perturbed", "perturbed+clean"),
                   help="advtrain-deepfool: train on the DeepFool examples only (the DeepFool paper's choice: "
                        "'only on the perturbed training set') or on them added to the clean training set")
    p.add_argument("--advtrain-max-iter", type=int, default=50,
                   help="advtrain-deepfool: DeepFool iterations when generating the training examples")
    p.add_argument("--ref-epochs", type=int, default=20, help="epochs of the reference (plain CE) training")
    p.add_argument("--ref-lr", type=finite_float, default=0.01, help="learning rate of the reference training")
    p.add_argument("--eval-samples", type=int, default=0, help="evaluate on the first N test images (0: all)")
    p.add_argument("--epoch-eval-samples", type=int, default=1000,
                   help="per-epoch evaluation on the first N test images (0: same as --eval-samples)")
    p.add_argument("--eval-max-iter", type=int, default=50, help="DeepFool iterations for ρ₂")
    p.add_argument("--eval-batch-size", type=int, default=500, help="batch size of the evaluation attacks")
    p.add_argument("--clip", action="store_true",
                   help="clip FGS images to the valid pixel range (default: not clipped, as the paper)")
    p.add_argument("--val-size", type=int, default=0,
                   help="hold N training images out as a validation set, evaluated every epoch (for sweeps)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and the hold-out split")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a terminal, e.g. sent to a file)")
    return p


# chosen with train/sweep.py on a validation split (see README and results/sweep-*.md); METHOD_DEFAULTS
# override DEFAULTS for one method
METHOD_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "mlp": {"advtrain-deepfool": {"lr": 2e-2}, "deepdefense+fgs": {"fgs_eps": 0.1}},
    "lenet": {"advtrain-deepfool": {"lr": 2.5e-3}, "deepdefense+fgs": {"fgs_eps": 0.1}},
    "resnet18-mnist": {},
}
DEFAULTS = {
    "lenet": {"epochs": 10, "lr": 5e-3, "fgs_eps": 0.2, "parseval_beta": 1e-1},
    "mlp": {"epochs": 60, "lr": 4e-2, "fgs_eps": 0.2, "parseval_beta": 1e-1},
    # torchvision's ResNet-18 with a one-channel stem on MNIST: UNTUNED. lr 5e-3 (LeNet's) diverged in epoch 1 (CE
    # 0 -> 8e17 within 9 batches); 1e-3 was stable; 3 epochs to fit 2 CPU cores
    "resnet18-mnist": {"epochs": 3, "lr": 1e-3, "fgs_eps": 0.2, "parseval_beta": 1e-1},
}
# per dataset, override both tables above for every method: on full Fashion-MNIST (60,000 images) the MNIST
# recipe is far too long and the MLP's lr 0.04 diverges (NaN in epoch 1); these are the settings of the committed
# Fashion-MNIST tables (results/table1-fashion-mnist*.md), short enough for 2 CPU cores
DATASET_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "fashion-mnist": {"mlp": {"epochs": 5, "lr": 5e-3}, "lenet": {"epochs": 3, "lr": 2e-3}},
}


def default_settings(model: str, method: str, dataset: str) -> dict[str, float]:
    """The defaults of the flags left unset: the model's, then the method's, then the dataset's (last wins)."""
    return {**DEFAULTS[model], **METHOD_DEFAULTS[model].get(method, {}),
            **DATASET_DEFAULTS.get(dataset, {}).get(model, {})}


FLOAT_FLAGS = ("lr", "momentum", "weight_decay", "lmbda", "c", "d", "overshoot", "alpha", "fgs_eps", "parseval_beta",
               "parseval_fraction", "ref_lr")


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.model not in models.ARCHITECTURES:
        parser.error(f"unknown model {args.model!r}; choose one of: {', '.join(models.ARCHITECTURES)}")
    if tuple(models.INPUT_SHAPES[args.model]) != (1, 28, 28):
        mnist_models = [a for a, shape in models.INPUT_SHAPES.items() if tuple(shape) == (1, 28, 28)]
        parser.error(f"model {args.model!r} takes {tuple(models.INPUT_SHAPES[args.model])} inputs, but this script loads "
            f"MNIST/Fashion-MNIST (1, 28, 28) only; choose one of: {', '.join(mnist_models)}")
    for key, value in default_settings(args.model, args.method, args.dataset).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    positive = ["epochs", "batch_size", "max_iter", "eval_max_iter", "eval_batch_size", "ref_epochs",
                "advtrain_max_iter"]
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    # the parser's finite_float already refuses NaN/inf; this also covers a Namespace built in code, and every range
    # test below is written so that NaN fails it
    for name in FLOAT_FLAGS:
        if not math.isfinite(getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must be a finite number, got {getattr(args, name)}")
    for name in ["lr", "ref_lr"]:
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ["lmbda", "c", "d", "overshoot", "weight_decay", "momentum", "eval_samples", "epoch_eval_samples",
                 "val_size", "lr_drop_epochs", "train_samples", "fgs_eps", "parseval_beta"]:
        if not getattr(args, name) >= 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not args.momentum < 1:
        parser.error(f"--momentum must lie in [0, 1), got {args.momentum}")
    if hasattr(args, "min_acc_ratio") and not 0 <= args.min_acc_ratio <= 1:
        parser.error(f"--min-acc-ratio must lie in [0, 1], got {args.min_acc_ratio}")
    if not 0 <= args.alpha <= 1:
        parser.error(f"--alpha must lie in [0, 1], got {args.alpha}")
    if not 0 < args.parseval_fraction <= 1:
        parser.error(f"--parseval-fraction must lie in (0, 1], got {args.parseval_fraction}")
    check_device(args.device, parser)
    if args.lr_drop_epochs >= args.epochs and args.epochs > 1:
        parser.error("--lr-drop-epochs must be smaller than --epochs")
    if args.out is None:
        args.out = f"runs/{args.model}-{args.method}-s{args.seed}"


def fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def get_reference(args, splits, preprocess, device) -> tuple[torch.nn.Module, dict, str]:
    """The reference model: ``--reference``, a cached one, or a freshly trained (and then cached) one."""
    if args.reference:
        try:
            net, ckpt = models.load(args.reference, arch=args.model, map_location=device)
        except models.CheckpointError as exc:
            raise SystemExit(f"error: {exc}") from None
        return net, ckpt["preprocess"], f"given: {args.reference}"
    key = (
        f"{args.model}-{args.dataset}-{fingerprint(splits.train_x, splits.train_y)}"
        f"-e{args.ref_epochs}-lr{args.ref_lr:g}-b{args.batch_size}-s{args.seed}"
    )
    path = Path(args.cache_dir) / f"{key}.pt"
    if path.exists():
        try:
            net, ckpt = models.load(path, arch=args.model, map_location=device)
        except models.CheckpointError as exc:
            raise SystemExit(f"error: cached reference: {exc} Delete {path} to train a new reference.") from None
        return net, ckpt["preprocess"], f"cached: {path}"
    print(f"training the reference model ({args.ref_epochs} epochs, lr {args.ref_lr}) -> {path}", flush=True)
    utils.seed_everything(args.seed)
    net = models.build(args.model).to(device)
    x = data_lib.preprocess(splits.train_x, preprocess).to(device)
    start = time.perf_counter()
    log = engine.train_reference(
        net, x, splits.train_y.to(device), epochs=args.ref_epochs, lr=args.ref_lr, batch_size=args.batch_size,
        seed=args.seed, progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    models.save(path, args.model, net, preprocess, metrics={"train_log": log, "train_seconds": seconds},
                config={"recipe": "SGD momentum 0.9, weight decay 5e-4, lr halved for the last 20% of epochs",
                        "epochs": args.ref_epochs, "lr": args.ref_lr, "batch_size": args.batch_size,
                        "seed": args.seed, "data": splits.source})
    return net, preprocess, f"trained ({seconds:.0f} s), cached: {path}"


def advtrain_set(args, ref_net, train_x, train_y, out: Path, clip) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Adv. Train I's training set: DeepFool examples of the training images, generated once from the reference
    model (cached in ``out/advtrain_set.pt`` so a resumed run reuses them), alone or added to the clean set."""
    path = out / "advtrain_set.pt"
    if path.exists():
        try:
            cached = models.load_state(path, ("x_adv", "fooled"), map_location=train_x.device, what="DeepFool set",
                                       shapes={"x_adv": tuple(train_x.shape), "fooled": (len(train_x),)})
        except models.CheckpointError as exc:
            raise SystemExit(f"error: {exc} Delete {path} to generate the DeepFool examples again.") from None
        x_adv, fooled = cached["x_adv"], cached["fooled"]
        print(f"DeepFool training examples: reusing {path}", flush=True)
    else:
        print(f"generating DeepFool examples of {len(train_y)} training images from the reference ...", flush=True)
        t0 = time.perf_counter()
        x_adv, fooled = revnet.baselines.deepfool_adversarial_set(
            ref_net.eval(), train_x, max_iter=args.advtrain_max_iter, overshoot=args.overshoot,
            batch_size=args.eval_batch_size, clip=clip)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
        models.save_atomic({"x_adv": x_adv, "fooled": fooled}, path)
    ratio = (x_adv - train_x).flatten(1).norm(dim=1) / train_x.flatten(1).norm(dim=1).clamp_min(1e-12)
    info = {"set": args.advtrain_set, "n_adversarial": len(x_adv), "fooled_fraction": fooled.float().mean().item(),
            "mean_ratio": ratio.mean().item()}
    if args.advtrain_set == "perturbed+clean":
        return torch.cat([train_x, x_adv]), torch.cat([train_y, train_y]), info
    return x_adv, train_y, info


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


def main(args: argparse.Namespace) -> dict[str, Any]:
    parser = get_args_parser()
    check_args(args, parser)
    device = utils.resolve_device(args.device)
    out = Path(args.out)
    resume_path = out / "resume" / "checkpoint.pt"
    if resume_path.exists() and not args.resume:
        raise SystemExit(f"error: {out} already holds a run; pass --resume to continue it or choose another --out.")
    utils.prepare_dir(out, "--out")  # a file in the way, a read-only folder or a full disk: refused now, not later
    if not args.reference:
        utils.prepare_dir(args.cache_dir, "--cache-dir")
    config = {"args": vars(args), "device": str(device), **utils.environment()}
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    wall_start = time.perf_counter()

    try:
        splits = data_lib.load(args.dataset, args.data_dir, download=not args.no_download)
        splits, (val_x_raw, val_y) = splits.hold_out(args.val_size, args.seed)
    except data_lib.DataError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.train_samples:
        keep = torch.randperm(len(splits.train_y), generator=torch.Generator().manual_seed(args.seed))
        keep = keep[: args.train_samples].sort().values  # a seeded random subset (the files are sorted by class)
        splits.train_x, splits.train_y = splits.train_x[keep], splits.train_y[keep]
    config["data"] = splits.source
    print(f"data: {splits.source}; training on {len(splits.train_y)} images, {len(val_y)} held out", flush=True)

    preprocess = data_lib.preprocess_params(splits.train_x)
    utils.seed_everything(args.seed)
    ref_net, preprocess, ref_origin = get_reference(args, splits, preprocess, device)
    config["reference"] = ref_origin
    print(f"reference: {ref_origin}", flush=True)
    try:
        utils.write_json(out / "config.json", config)
    except models.WriteError as exc:
        raise SystemExit(f"error: {exc}") from None

    prep = lambda t: data_lib.preprocess(t, preprocess).to(device)  # noqa: E731
    train_x, train_y = prep(splits.train_x), splits.train_y.to(device)
    n_eval = args.eval_samples or len(splits.test_y)
    test_x, test_y = prep(splits.test_x[:n_eval]), splits.test_y[:n_eval].to(device)
    n_epoch_eval = min(args.epoch_eval_samples or n_eval, n_eval)
    val_x, val_y = prep(val_x_raw), val_y.to(device)
    eval_kw = dict(max_iter=args.eval_max_iter, overshoot=args.overshoot, batch_size=args.eval_batch_size,
                   clip=(float(prep(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)).min()),
                         float(prep(torch.full((1, 1, 28, 28), 255, dtype=torch.uint8)).max())) if args.clip else None)

    net = models.build(args.model).to(device)
    modules_with_params = [name for name, m in net.named_modules() if name and any(True for _ in m.parameters(False))]
    all_modules = {name for name, _ in net.named_modules() if name}
    if args.reg_layers and not set(args.reg_layers) <= all_modules:
        raise SystemExit(f"error: --reg-layers {args.reg_layers}: {args.model}'s modules with parameters are "
                         f"{modules_with_params} (print(models.build({args.model!r})) shows them).")
    if args.reg_layers and args.method not in ("deepdefense", "deepdefense+fgs"):
        raise SystemExit("error: --reg-layers applies to the Deep Defense methods only.")
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    milestones = [args.epochs - args.lr_drop_epochs] if args.lr_drop_epochs else []
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.5)

    if args.resume and resume_path.exists():
        state = utils.load_resume(resume_path, net, device)
        check_resume_args(state.get("args", {}), vars(args), resume_path)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        start_epoch, history, ref_metrics = state["epoch"] + 1, list(state["history"]), state["reference_metrics"]
        print(f"resuming {out} after epoch {state['epoch']}", flush=True)
    else:
        net.load_state_dict(ref_net.state_dict())
        print(f"evaluating the reference on {n_epoch_eval} test images ...", flush=True)
        ref_metrics = engine.evaluate(net, test_x[:n_epoch_eval], test_y[:n_epoch_eval], find_eps_ref=True, **eval_kw)
        if len(val_y):
            ref_metrics["val"] = engine.evaluate(net, val_x, val_y, **eval_kw)
        print(f"reference: acc {ref_metrics['acc']:.4f}, rho2 {ref_metrics['rho2']:.4f}, "
              f"eps_ref {ref_metrics['own_eps_ref']:.4g}", flush=True)
        start_epoch, history = 1, []
    epoch_eps = ref_metrics["own_eps_ref"]  # fixed for the whole run so the curves are comparable
    print(epoch_legend(epoch_eps), flush=True)

    advtrain_info = None
    if args.method == "advtrain-deepfool":
        train_x, train_y, advtrain_info = advtrain_set(args, ref_net, train_x, train_y, out, eval_kw["clip"])

    for epoch in range(start_epoch, args.epochs + 1):
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        t0 = time.perf_counter()
        try:
            stats = engine.train_one_epoch(
                net, optimizer, train_x, train_y, method=args.method, batch_size=args.batch_size, generator=gen,
                lmbd=args.lmbda, c=args.c, d=args.d, max_iter=args.max_iter, overshoot=args.overshoot,
                reg_layers=args.reg_layers,
                fgs_eps=args.fgs_eps, alpha=args.alpha, clip=eval_kw["clip"], parseval_beta=args.parseval_beta,
                parseval_fraction=args.parseval_fraction,
                desc=f"epoch {epoch}/{args.epochs}", progress=not args.no_progress,
            )
        except engine.NonFiniteLossError as exc:
            fail_run(out, args, history, f"{exc} (epoch {epoch})", resume_path)
        lr_used = optimizer.param_groups[0]["lr"]  # this epoch's rate (the scheduler then sets the next one)
        scheduler.step()
        train_seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "lr": lr_used, "train_seconds": train_seconds, **stats}
        row["test"] = engine.evaluate(net, test_x[:n_epoch_eval], test_y[:n_epoch_eval], eps_ref=epoch_eps, **eval_kw)
        if len(val_y):
            row["val"] = engine.evaluate(net, val_x, val_y, **eval_kw)
        reason = engine.collapse_reason(stats, row["test"]["acc"], ref_metrics["acc"],
                                        models.NUM_CLASSES[args.model], args.min_acc_ratio)
        if reason is not None:  # never kept as the last good state
            fail_run(out, args, history + [{**row, "failed": reason}], f"{reason} (epoch {epoch})", resume_path)
        history.append(row)
        models.save_atomic(
            {"model": net.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
             "epoch": epoch, "rng": {"torch": torch.get_rng_state()}, "args": _plain(vars(args)),
             "history": history, "reference_metrics": ref_metrics},
            resume_path,
        )
        utils.write_text_atomic(out / "log.jsonl", "".join(utils.json.dumps(r, sort_keys=True) + "\n" for r in history))
        t = row["test"]
        print(f"epoch {epoch}/{args.epochs}: loss {stats['train_loss']:.4f}, test acc {t['acc']:.4f}, "
              f"rho2 {t['rho2']:.4f}, fgs@1.0 {t['fgs_acc@1.0']:.4f} ({train_seconds:.0f} s train)", flush=True)

    print(f"final evaluation on {n_eval} test images ...", flush=True)
    ft_final = engine.evaluate(net, test_x, test_y, find_eps_ref=True, **eval_kw)
    eps = ft_final["own_eps_ref"]
    ref_final = engine.evaluate(ref_net, test_x, test_y, eps_ref=eps, **eval_kw)
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
    result = {"model": args.model, "method": args.method, "reference": ref_final, "finetuned": ft_final,
              "reference_val": ref_metrics.get("val"),
              "reference_epoch_eval": {k: v for k, v in ref_metrics.items() if k != "val"},
              "advtrain_set": advtrain_info,
              "eps_ref": eps, "rho2_ratio": rho2_ratio, "wall_seconds": wall_seconds,
              "history": history, "data": splits.source}
    if rho2_ratio is None:
        result["rho2_ratio_note"] = "undefined: the reference's rho2 is 0 (DeepFool left every test image unchanged)"
    if reevaluation_seconds is not None:
        result["reevaluation_seconds"] = reevaluation_seconds
    summary = summary_markdown(args, ref_final, ft_final, eps, wall_seconds, splits.source)
    try:  # final.pt first: the model is never lost to a later failure
        models.save(out / "final.pt", args.model, net, preprocess, metrics=_plain(
            {k: v for k, v in result.items() if k != "history"}), config=_plain(vars(args)))
        utils.write_json(out / "metrics.json", result)
        utils.write_text_atomic(out / "summary.md", summary)
        (out / "failed.json").unlink(missing_ok=True)  # a resumed run that failed before has now finished
    except models.WriteError as exc:
        raise SystemExit(f"error: {exc}") from None
    print("\n" + summary + final_legend(eps, epoch_eps), flush=True)
    return result


RESUME_FREE_ARGS = {"resume", "out", "no_progress", "device", "eval_batch_size", "data_dir", "cache_dir", "no_download"}


def check_resume_args(saved: dict[str, Any], now: dict[str, Any], path: Path) -> None:
    """Refuse ``--resume`` with settings that differ from the run's (only the flags in ``RESUME_FREE_ARGS``,
    which do not change the computation, may differ), so a run never mixes configurations."""
    changed = sorted(key for key in set(saved) & set(now) if key not in RESUME_FREE_ARGS  # flags added later: absent
                     and _plain(saved[key]) != _plain(now[key]))
    if changed:
        diffs = ", ".join(f"--{k.replace('_', '-')} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed)
        raise SystemExit(f"error: --resume with other settings than the run in {path.parent.parent} ({diffs}); "
                         "resume with the run's own flags (config.json lists them) or start a new --out.")


def fail_run(out: Path, args: argparse.Namespace, history: list[dict[str, Any]], reason: str, resume_path: Path):
    """Mark a diverged run as failed (``summary.md``, ``failed.json``, ``log.jsonl``) and exit with status 1;
    the resume checkpoint stays at the last good epoch (or the reference, before the first)."""
    last = resume_path if resume_path.exists() else "none (the reference; no epoch finished)"
    utils.write_text_atomic(out / "summary.md", f"# {args.model} / {args.method}: FAILED\n\n- diverged: {reason}\n"
                            f"- last good state: {last}\n")
    utils.write_json(out / "failed.json", {"failed": reason, "history": history})  # metrics.json means finished
    utils.write_text_atomic(out / "log.jsonl", "".join(utils.json.dumps(r, sort_keys=True) + "\n" for r in history))
    raise SystemExit(f"error: the run diverged: {reason}. Marked FAILED in {out / 'summary.md'}; the last good state "
                     f"is {last}. Lower --lr or --lmbda and start again in a new --out.")


def _plain(obj: Any) -> Any:
    """Only str/int/float/bool/None (and lists/dicts of them), as ``weights_only`` loading wants."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except models.WriteError as exc:  # a failed write anywhere (resume checkpoint, log.jsonl): one line
        raise SystemExit(f"error: {exc}") from None

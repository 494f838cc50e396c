"""``finetune.py``'s command line: the parser (every flag with its help; each method adds its own, see
:mod:`revnet_app.train.methods`) and the checks of the parsed values, with the defaults of the model, method and
dataset filled in (:mod:`revnet_app.train.recipes`)."""

from __future__ import annotations

import argparse
import math
from revnet_app import models
from revnet_app.train import engine, methods, pipeline as pipeline_lib, recipes, utils
from revnet_app.train.cli import add_device_flag, check_device, finite_float
from revnet_app.train.methods import ALL_METHODS as METHODS
from revnet_app.train.recipes import default_settings

METHOD_HELP = methods.method_help()


class _HelpFormatter(utils.HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``utils.HelpFormatter`` that prints the description and the recipe list at the end line by line."""


def get_args_parser(add_help: bool = True, model: str | None = None) -> argparse.ArgumentParser:
    """The flags; with ``model`` (``finetune.py MODEL --help``) the help ends with that model's data and defaults."""
    epilog = recipes.describe(model) if model else "\n".join(recipes.describe(m) for m in recipes.MODEL_DATASETS)
    p = argparse.ArgumentParser(
        description="Deep Defense fine-tuning (reference, fine-tuning, evaluation) on MNIST, Fashion-MNIST, CIFAR-10 "
                    "or ImageNet. Flags left unset take the defaults of the model, method and dataset listed at the "
                    "end (train/recipes.py).",
        add_help=add_help,
        formatter_class=_HelpFormatter,
        epilog=epilog,
    )
    p.add_argument("model", nargs="?", default=None,
                   help=f"architecture: {', '.join(models.ARCHITECTURES)}; or module:function, a function "
                        "of a module on the Python path (e.g. mymodels.py in the current folder) that returns "
                        "an nn.Module, converted with revnet.convert")
    p.add_argument("--model", dest="model_flag", default=None, metavar="MODULE:FUNCTION",
                   help="the same as the positional model, e.g. --model mymodels:small_cnn (a model of your own)")
    p.add_argument("--model-args", nargs="+", default=None, metavar="KEY=VALUE",
                   help="keyword arguments of a module:function builder, each value a Python literal, e.g. "
                        "--model torchvision.models:vit_b_16 --model-args image_size=32 num_classes=10 (recorded "
                        "in final.pt, so models.load rebuilds the same model)")
    p.add_argument("--method", default="deepdefense", choices=METHODS, help=METHOD_HELP)
    p.add_argument("--dataset", default=None, choices=pipeline_lib.DATASETS,
                   help="dataset (default: the model's: mnist for mlp/lenet/resnet18-mnist and own models, cifar10 for "
                        "convnet/nin, imagenet for alexnet/resnet18)")
    p.add_argument("--data-dir", default=None,
                   help="MNIST/Fashion-MNIST: folder in torchvision layout (DIR/MNIST/raw/, DIR/FashionMNIST/raw/); "
                        "default ./data, downloading if possible, else for MNIST the embedded 5,000-image subset, for "
                        "Fashion-MNIST the files of `apt-get install dataset-fashion-mnist` (copied into ./data). "
                        "CIFAR-10: DIR/cifar-10-batches-py/ (required; downloaded into DIR when online). ImageNet: "
                        "DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG (required; never downloaded)")
    p.add_argument("--no-download", action="store_true",
                   help="never download: without MNIST on disk, use the embedded subset (offline tests)")
    p.add_argument("--crop-size", type=int, default=224,
                   help="ImageNet: crop of the network input (training RandomResizedCrop, evaluation Resize(256/224·"
                        "crop) + CenterCrop); AlexNet needs at least 63")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: 0 for data held in memory, MNIST and CIFAR-10; for "
                        "ImageNet 4, or the number of CPU cores if fewer)")
    p.add_argument("--train-samples", type=int, default=0,
                   help="fine-tune (and train the reference) on a seeded random N of the training images (0: all)")
    p.add_argument("--out", default=None, help="run directory (default runs/<model>-<method>-s<seed>)")
    p.add_argument("--min-acc-ratio", type=finite_float, default=engine.MIN_ACC_RATIO,
                   help="divergence rule: an epoch whose test accuracy falls below this fraction of the reference's "
                        "(on the same images), or whose mean training cross-entropy exceeds 10·ln(classes), marks the "
                        "run FAILED (exit status 1) and is not kept as the last good state")
    p.add_argument("--max-train-ce", type=finite_float, default=None,
                   help="divergence rule: the largest mean training cross-entropy of a healthy epoch (default "
                        "10·ln(classes))")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint (end of an epoch, or a step of "
                        "--checkpoint-every); starts fresh if there is none")
    p.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                   help="also write the resume checkpoint every N training steps within an epoch (0: at the end of "
                        "each epoch only); --resume continues from the step exactly. One ImageNet epoch is hours")
    p.add_argument("--reference", default=None,
                   help="checkpoint of the reference model to fine-tune (default: train one, cached in --cache-dir)")
    p.add_argument("--reference-format", default="revnet", choices=("revnet", "torchvision"),
                   help="revnet: a checkpoint written by this code (weights, preprocessing, architecture); "
                        "torchvision: a raw state_dict of the torchvision model (torch.save(model.state_dict())), "
                        "taken to expect the dataset's standard preprocessing (ImageNet: Resize 256, CenterCrop 224, "
                        "mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225))")
    p.add_argument("--pretrained", action="store_true",
                   help="alexnet, resnet18 on imagenet: the reference is torchvision's pretrained IMAGENET1K_V1 model "
                        "(downloaded into torch's hub cache; offline, download it elsewhere and pass --reference PATH "
                        "--reference-format torchvision)")
    p.add_argument("--cache-dir", default="runs/references", help="where trained reference models are cached")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: see the list at the end)")
    p.add_argument("--lr", type=finite_float, default=None,
                   help="fine-tuning learning rate (default: see the list at the end; MNIST: lenet 5e-3, mlp 4e-2, "
                        "Adv. Train I half of that)")
    p.add_argument("--lr-drop-epochs", type=int, default=None,
                   help="halve the learning rate for the last N epochs (default: 1; CIFAR-10: 10, the paper's; "
                        "ImageNet: 0)")
    p.add_argument("--momentum", type=finite_float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=finite_float, default=5e-4, help="SGD weight decay")
    p.add_argument("--batch-size", type=int, default=100,
                   help="training batch size, global: under torchrun each of the N processes takes its share "
                        "(batch size / N images) of the same batches as one process would, so the same flags "
                        "train the same model on any number of processes")
    methods.add_all_args(p)  # each method's own flags (revnet_app.train.methods)
    p.add_argument("--ref-epochs", type=int, default=None,
                   help="epochs of the reference (plain CE) training (default: 20; CIFAR-10 60, untuned)")
    p.add_argument("--ref-lr", type=finite_float, default=None,
                   help="learning rate of the reference training (default: 0.01)")
    utils.add_eval_subset_flags(p)
    p.add_argument("--epoch-eval-samples", type=int, default=1000,
                   help="per-epoch evaluation on the first N evaluation images (0: same as --eval-samples)")
    p.add_argument("--eval-max-iter", type=int, default=50, help="DeepFool iterations for ρ₂")
    p.add_argument("--eval-batch-size", type=int, default=500,
                   help="batch size of the evaluation attacks, per process (under torchrun each process evaluates "
                        "its shard of the images; every reported number is summed over the processes)")
    p.add_argument("--eval-cache-mb", type=int, default=2048,
                   help="an evaluation set that fits in this many MB (network inputs and FGS signs) is kept in memory "
                        "for the ε_ref bisection; a larger one is streamed again for every step (bounded memory)")
    p.add_argument("--clip", action="store_true",
                   help="clip FGS images to the valid pixel range (default: not clipped, as the paper)")
    p.add_argument("--val-size", type=int, default=0,
                   help="hold N training images out as a validation set, evaluated every epoch (for sweeps)")
    add_device_flag(p, help="cpu, cuda or cuda:N (default: cuda if available). Under torchrun each process takes the "
                        "GPU of its LOCAL_RANK (NCCL); --device cpu runs the processes on the CPU (gloo)")
    p.add_argument("--amp", action="store_true",
                   help="training steps under bf16 autocast (meant for CUDA; it also runs on the CPU): convolutions "
                        "and matrix products, forward and reverse, in bf16; the DeepFool step (its norms and the "
                        "division by ‖w‖²), the accumulated perturbation, the regularizer's exp and the "
                        "cross-entropy stay in float32. Every evaluation runs in float32. benchmarks/amp.py "
                        "measures how far ρ₂ and the regularizer's gradient move")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                   help="floating-point type of the weights, the inputs and every computation (reference training, "
                        "fine-tuning, evaluation). float64 is slow but gives the same numbers to ~1e-12 on any CPU "
                        "(tests/app/test_regression.py pins the first steps with it); a float32 --reference is cast to it")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads of this process (torch.set_num_threads; default: torch's, the number of cores). "
                        "float32 sums are reduced in another order with another count, so runs that must agree to "
                        "the last bit fix it")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling and the hold-out split")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a terminal, e.g. sent to a file)")
    return p


FLOAT_FLAGS = ("lr", "momentum", "weight_decay", "lmbda", "c", "d", "overshoot", "alpha", "fgs_eps", "parseval_beta",
               "parseval_fraction", "ref_lr")


def check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    flag = getattr(args, "model_flag", None)
    if flag and args.model and flag != args.model:
        parser.error(f"two models named: {args.model!r} and --model {flag!r}; name one")
    args.model = args.model or flag
    if not args.model:
        parser.error(f"name a model: one of {', '.join(models.ARCHITECTURES)}, or --model module:function")
    if args.model not in models.ARCHITECTURES and not models.is_user_model(args.model):
        parser.error(f"unknown model {args.model!r}; choose one of: {', '.join(models.ARCHITECTURES)}, or "
                     "module:function for a model of your own")
    if getattr(args, "model_args", None):
        if not models.is_user_model(args.model):
            parser.error(f"--model-args is for a builder of one's own (module:function); {args.model!r} takes none")
        parse_model_args(args.model_args)  # refused now, not after the data is loaded
    if args.dataset is None:
        args.dataset = recipes.default_dataset(args.model)
    if getattr(args, "crop_size", 224) < 1:
        parser.error(f"--crop-size must be at least 1, got {args.crop_size}")
    why = recipes.incompatibility(args.model, args.dataset, getattr(args, "crop_size", 224))
    if why:
        parser.error(why)
    explicit_drop = args.lr_drop_epochs is not None
    for key, value in default_settings(args.model, args.method, args.dataset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not explicit_drop and args.epochs > 1 and args.lr_drop_epochs >= args.epochs:
        args.lr_drop_epochs = args.epochs - 1  # a short run of a recipe that halves for the last 10 epochs
    if getattr(args, "amp", False) and getattr(args, "dtype", "float32") != "float32":
        parser.error(f"--amp computes in bf16 from float32 weights; it does not combine with --dtype {args.dtype}")
    positive = ["epochs", "batch_size", "max_iter", "eval_max_iter", "eval_batch_size", "ref_epochs",
                "advtrain_max_iter"] + (["threads"] if getattr(args, "threads", None) is not None else [])
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
                 "val_size", "lr_drop_epochs", "train_samples", "fgs_eps", "parseval_beta", "candidates",
                 "checkpoint_every", "workers", "eval_cache_mb"]:
        value = getattr(args, name, 0)
        if value is not None and not value >= 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative, got {value}")
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
    if getattr(args, "pretrained", False) and args.reference:
        parser.error("--pretrained and --reference both name a reference; pass one")
    if getattr(args, "reference_format", "revnet") == "torchvision" and not args.reference:
        parser.error("--reference-format torchvision needs --reference PATH (the state_dict file)")
    if args.out is None:
        safe = args.model.replace(":", "_").replace("/", "_")
        args.out = f"runs/{safe}-{args.method}-s{args.seed}"


def parse_model_args(items: list[str] | None) -> dict:
    """``--model-args KEY=VALUE ...`` as keyword arguments: each value a Python literal (``10``, ``0.1``,
    ``True``, ``'avg'``, ``(32, 32)``), or else the text itself (``global_pool=avg``)."""
    import ast

    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"error: --model-args {item!r}: write KEY=VALUE, e.g. num_classes=10")
        if key in out:
            raise SystemExit(f"error: --model-args names {key!r} twice")
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key] = text
    return out

"""The fine-tuning recipes of ``finetune.py``: which data each model takes, and the defaults of every flag left
unset, per dataset, model and method.

Sources: the paper (``../shared/paper/``, §4) fixes λ = 15, c = 25, d = 5 on MNIST and CIFAR-10 (NIN: c = 70) and
λ = 5, c = 500, d = 5 on ImageNet; the learning rate halved for the last 10 epochs on CIFAR-10; 10 fine-tuning
epochs for AlexNet and 1 for ResNet-18 on ImageNet; Parseval β = 3e-4 on CIFAR-10. The MNIST recipes were chosen
with ``train/sweep.py`` on a validation split (README, ``results/sweep-*.md``). Everything else on CIFAR-10 and
ImageNet (epochs and learning rate on CIFAR-10, learning rates on ImageNet, FGS steps, reference training) is
**untuned**: the paper's text does not give it, and there is no CIFAR-10 or ImageNet here to tune on. DeepFool on
ImageNet uses the top-10 candidate classes (DeepFool's convention; not in the paper's text).

``default_settings(model, method, dataset)`` merges, last wins: ``BASE``, ``DATASET_BASE[dataset]``,
``DEFAULTS[model]``, the method's ``model_defaults[model]``, ``DATASET_DEFAULTS[dataset][model]``, the method's
``tuned[dataset][model]`` (each method keeps its own in ``revnet_app.train.methods``).
"""

from __future__ import annotations

from typing import Optional

from revnet_app.train import pipeline
from revnet_app.train.methods import METHOD_CLASSES, DeepDefense

MNIST_LIKE = ("mnist", "fashion-mnist")
MODEL_DATASETS = {
    "mlp": MNIST_LIKE,
    "lenet": MNIST_LIKE,
    "resnet18-mnist": MNIST_LIKE,
    "convnet": ("cifar10",),
    "nin": ("cifar10",),
    "alexnet": ("imagenet",),
    "resnet18": ("imagenet", "cifar10"),
}
"""The datasets each built-in model runs on (its first is the default of ``--dataset``); a user's
``module:function`` model may take any."""

PRETRAINED = {"alexnet": "AlexNet_Weights.IMAGENET1K_V1", "resnet18": "ResNet18_Weights.IMAGENET1K_V1"}
"""torchvision's ImageNet weights that ``--pretrained`` loads as the reference."""

MIN_CROP = {"alexnet": 63, "resnet18": 32}
"""The smallest ``--crop-size`` each ImageNet model accepts (AlexNet's three max poolings need 63 px)."""

BASE = {"lmbda": 15.0, "c": 25.0, "d": 5.0, "lr_drop_epochs": 1, "ref_epochs": 20, "ref_lr": 0.01, "candidates": 0}
DATASET_BASE: dict[str, dict[str, float]] = {
    # a user's own model on MNIST-like data (the built-in ones override these): untuned
    "mnist": {"epochs": 10, "lr": 1e-3, "fgs_eps": 0.2, "parseval_beta": 1e-1},
    "fashion-mnist": {"epochs": 3, "lr": 1e-3, "fgs_eps": 0.2, "parseval_beta": 1e-1},
    # λ, c, d, the last-10-epochs halving and Parseval β from the paper; epochs, lr, FGS step, reference: untuned
    "cifar10": {"epochs": 30, "lr": 1e-3, "lr_drop_epochs": 10, "fgs_eps": 0.1, "parseval_beta": 3e-4,
                "ref_epochs": 60, "ref_lr": 0.01},
    # λ, c, d and the epochs from the paper, top-10 DeepFool candidates; lr, FGS step, Parseval β: untuned
    "imagenet": {"lmbda": 5.0, "c": 500.0, "d": 5.0, "candidates": 10, "epochs": 1, "lr": 1e-4, "lr_drop_epochs": 0,
                 "fgs_eps": 0.02, "parseval_beta": 3e-4, "ref_epochs": 90, "ref_lr": 0.1},
}
DEFAULTS: dict[str, dict[str, float]] = {
    "lenet": {"epochs": 10, "lr": 5e-3, "fgs_eps": 0.2, "parseval_beta": 1e-1},
    "mlp": {"epochs": 60, "lr": 4e-2, "fgs_eps": 0.2, "parseval_beta": 1e-1},
    # torchvision's ResNet-18 with a one-channel stem on MNIST: UNTUNED. lr 5e-3 (LeNet's) diverged in epoch 1 (CE
    # 0 -> 8e17 within 9 batches); 1e-3 was stable; 3 epochs to fit 2 CPU cores
    "resnet18-mnist": {"epochs": 3, "lr": 1e-3, "fgs_eps": 0.2, "parseval_beta": 1e-1},
}
# per dataset and model, override the tables above for every method: on full Fashion-MNIST (60,000 images) the
# MNIST recipe is far too long and the MLP's lr 0.04 diverges (NaN in epoch 1); these are the settings of the
# committed Fashion-MNIST tables (results/table1-fashion-mnist*.md), short enough for 2 CPU cores
DATASET_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "fashion-mnist": {"mlp": {"epochs": 5, "lr": 5e-3}, "lenet": {"epochs": 3, "lr": 2e-3}},
    "cifar10": {"nin": {"c": 70.0}},
    "imagenet": {"alexnet": {"epochs": 10, "lr_drop_epochs": 0}, "resnet18": {"epochs": 1}},
}


TUNED_OURS = DeepDefense.tuned  # Deep Defense's c and λ tuned on validation (MNIST mlp/lenet)


def default_dataset(model: str) -> str:
    """The ``--dataset`` of a model when none is given: its first in ``MODEL_DATASETS`` (a user's model: mnist)."""
    return MODEL_DATASETS.get(model, MNIST_LIKE)[0]


def default_settings(model: str, method: str, dataset: str) -> dict[str, float]:
    """The defaults of the flags left unset (see the module docstring for the order)."""
    cls = METHOD_CLASSES[method]
    return {**BASE, **DATASET_BASE.get(dataset, {}), **DEFAULTS.get(model, {}), **cls.model_defaults.get(model, {}),
            **DATASET_DEFAULTS.get(dataset, {}).get(model, {}), **cls.tuned.get(dataset, {}).get(model, {})}


def paper_c_lmbda(dataset: str, model: str) -> dict[str, float]:
    """The paper's c and λ for ``model`` on ``dataset`` (the defaults before tuning)."""
    s = {**BASE, **DATASET_BASE.get(dataset, {}), **DATASET_DEFAULTS.get(dataset, {}).get(model, {})}
    return {"c": s["c"], "lmbda": s["lmbda"]}


def incompatibility(model: str, dataset: str, crop: int) -> Optional[str]:
    """Why ``model`` cannot run on ``dataset`` (one sentence), or ``None``."""
    if model in MODEL_DATASETS and dataset not in MODEL_DATASETS[model]:
        fits = [m for m, d in MODEL_DATASETS.items() if dataset in d]
        return (f"model {model!r} runs on {', '.join(MODEL_DATASETS[model])}, not {dataset}; on {dataset} choose one "
                f"of: {', '.join(fits)}")
    if dataset == "imagenet" and crop < MIN_CROP.get(model, 1):
        return f"--crop-size {crop} is too small for {model} (at least {MIN_CROP[model]} px)"
    return None


UNTUNED = {"cifar10": "epochs, lr, FGS step and reference recipe untuned", "imagenet": "lr and FGS step untuned"}


def describe(model: str) -> str:
    """The data ``model`` needs and its defaults per dataset and method, for ``finetune.py MODEL --help``."""
    lines = [f"{model}: data and defaults"]
    for dataset in MODEL_DATASETS.get(model, MNIST_LIKE):
        s = default_settings(model, "deepdefense", dataset)
        lines.append(f"  --dataset {dataset}: {pipeline.DATA_HELP[dataset]}")
        lines.append(f"    Deep Defense: λ {s['lmbda']:g}, c {s['c']:g}, d {s['d']:g}"
                     + (" (tuned on validation here; the paper's: c {c:g}, λ {lmbda:g})".format(
                         **paper_c_lmbda(dataset, model)) if model in TUNED_OURS.get(dataset, {}) else "")
                     + (f", DeepFool over the top-{s['candidates']:g} classes" if s["candidates"] else "")
                     + f"; {s['epochs']:g} epochs at lr {s['lr']:g}"
                     + (f", halved for the last {s['lr_drop_epochs']:g}" if s["lr_drop_epochs"] else ""))
        others = {m: default_settings(model, m, dataset) for m in ("advtrain-deepfool", "advtrain-fgs",
                                                                     "parseval", "deepdefense+fgs")}
        lines.append(f"    baselines: Adv. Train I lr {others['advtrain-deepfool']['lr']:g}; FGS step "
                     f"{others['advtrain-fgs']['fgs_eps']:g} (Ours+FGS {others['deepdefense+fgs']['fgs_eps']:g}); "
                     f"Parseval β {others['parseval']['parseval_beta']:g}")
        if model in PRETRAINED and dataset == "imagenet":
            lines.append(f"    reference: --pretrained (torchvision's {PRETRAINED[model]}) or --reference PATH")
        else:
            lines.append(f"    reference: trained here ({s['ref_epochs']:g} epochs, lr {s['ref_lr']:g}, SGD momentum "
                         "0.9, weight decay 5e-4, lr halved for the last 20%) unless --reference PATH")
        if dataset in UNTUNED:
            lines.append(f"    ({UNTUNED[dataset]}: the paper's text does not give them)")
    return "\n".join(lines)

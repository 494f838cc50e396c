"""The numbers printed in the Deep Defense paper's Table 1 (Yan, Guo & Zhang, NeurIPS 2018).

Every row (MNIST, CIFAR-10, ImageNet) is transcribed from ``../shared/paper/deep-defense-neurips2018.md``
(Table 1) and was checked against it twice, number by number. (The MNIST rows were first typed from memory;
five LeNet cells were wrong then: Par. Train's FGS columns, Adv. Train I's ρ₂ and FGS columns, and Ours' Acc.@0.2
and @0.5. ``tests/app/test_paper.py`` pins the corrected ones.) Columns: test accuracy (%), ρ₂, and FGS accuracy
(%) at 0.2/0.5/1.0·ε_ref (ε_ref: the FGS step at which the paper's own Deep Defense model drops to 50%
accuracy). The paper's MNIST models were trained on the full 60,000-image training set with 0–255 inputs; ours
use the 5,000-image subset in ``../shared/data``, so only the *ordering* of the methods and the size of the gains
are comparable. The paper prints Ours' LeNet Acc.@0.5ε_ref as 88.93%, the same digits as its MLP cell; it is
kept as printed.
"""

from __future__ import annotations

COLUMNS = ("acc", "rho2", "fgs_acc@0.2", "fgs_acc@0.5", "fgs_acc@1.0")

TABLE1 = {
    "mnist": {
        "mlp": {
            "reference": (98.31, 0.111, 72.76, 29.08, 3.31),
            "parseval": (98.32, 0.111, 77.44, 28.95, 2.96),
            "advtrain-deepfool": (98.49, 0.162, 87.70, 59.69, 22.55),
            "deepdefense": (98.65, 0.225, 95.04, 88.93, 50.00),
        },
        "lenet": {
            "reference": (99.02, 0.205, 90.95, 53.88, 19.75),
            "parseval": (99.10, 0.203, 91.68, 66.48, 19.64),
            "advtrain-deepfool": (99.18, 0.263, 95.20, 74.82, 41.40),
            "deepdefense": (99.34, 0.284, 96.51, 88.93, 50.00),
        },
    },
    "cifar10": {
        "convnet": {
            "reference": (79.74, 2.59e-2, 61.62, 37.84, 23.85),
            "parseval": (80.48, 3.42e-2, 69.19, 50.43, 22.13),
            "advtrain-deepfool": (80.65, 3.05e-2, 65.16, 45.03, 35.53),
            "deepdefense": (81.70, 5.32e-2, 72.15, 59.02, 50.00),
        },
        "nin": {
            "reference": (89.64, 4.20e-2, 75.61, 49.22, 33.56),
            "parseval": (88.20, 4.33e-2, 75.39, 49.75, 17.74),
            "advtrain-deepfool": (89.87, 5.25e-2, 78.87, 58.85, 45.90),
            "deepdefense": (89.96, 5.58e-2, 80.70, 70.73, 50.00),
        },
    },
    "imagenet": {  # the paper fine-tunes only with its own method on ImageNet
        "alexnet": {
            "reference": (56.91, 2.98e-3, 54.62, 51.39, 46.05),
            "deepdefense": (57.11, 4.54e-3, 55.79, 53.50, 50.00),
        },
        "resnet18": {
            "reference": (69.64, 1.63e-3, 63.39, 54.45, 41.70),
            "deepdefense": (69.66, 2.43e-3, 65.53, 59.46, 50.00),
        },
    },
}


def paper_row(dataset: str, model: str, method: str) -> dict[str, float] | None:
    """The paper's numbers for one row as ``{column: value}`` (accuracies in %), or ``None``."""
    row = TABLE1.get(dataset, {}).get(model, {}).get(method)
    return None if row is None else dict(zip(COLUMNS, row))

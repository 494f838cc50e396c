"""The numbers printed in the Deep Defense paper's Table 1 (Yan, Guo & Zhang, NeurIPS 2018), MNIST rows.

Typed in by hand from the paper. This offline environment has no copy of the paper to check them against,
so they have not been re-checked since: if one disagrees with the PDF, the PDF wins. Columns: test accuracy
(%), ρ₂, and FGS accuracy (%) at 0.2/0.5/1.0·ε_ref (ε_ref: the FGS step at which the paper's own Deep Defense
model drops to 50% accuracy). The paper's models were trained on the full 60,000-image MNIST training set with
0–255 inputs; ours use the 5,000-image subset in ``../shared/data``, so only the *ordering* of the methods and
the size of the gains are comparable.
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
            "parseval": (99.10, 0.203, 90.63, 55.81, 20.34),
            "advtrain-deepfool": (99.18, 0.249, 93.47, 63.46, 28.12),
            "deepdefense": (99.34, 0.284, 96.15, 80.03, 50.00),
        },
    },
}


def paper_row(dataset: str, model: str, method: str) -> dict[str, float] | None:
    """The paper's numbers for one row as ``{column: value}`` (accuracies in %), or ``None``."""
    row = TABLE1.get(dataset, {}).get(model, {}).get(method)
    return None if row is None else dict(zip(COLUMNS, row))

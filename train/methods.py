"""The fine-tuning methods that ``finetune.py --method`` accepts, with the names the paper's Table 1 uses."""

from __future__ import annotations

METHODS = ("deepdefense", "clean", "advtrain-deepfool", "advtrain-fgs", "parseval", "deepdefense+fgs")

LABELS = {
    "reference": "Reference",
    "parseval": "Par. Train",
    "advtrain-deepfool": "Adv. Train I",
    "deepdefense": "Ours",
    "deepdefense-paper": "Ours (paper's c, λ)",  # table1.py's row where the defaults are tuned ones (MNIST)
    "clean": "Clean",
    "advtrain-fgs": "Adv. Train II",
    "deepdefense+fgs": "Ours+FGS",
}

# rows of Table 1 in the paper's order, then the rows the paper's Table 1 does not have
PAPER_ROWS = ("reference", "parseval", "advtrain-deepfool", "deepdefense")
EXTRA_ROWS = ("clean", "advtrain-fgs", "deepdefense+fgs")

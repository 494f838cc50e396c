"""``train/paper.py`` against the paper's own text: every number of Table 1, read from ``../shared/paper/``.

Time budget: well under 1 s (one markdown file parsed).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import paper  # noqa: E402

PAPER = ROOT.parent / "shared" / "paper" / "deep-defense-neurips2018.md"
DATASETS = {"MNIST": "mnist", "CIFAR-10": "cifar10", "ImageNet": "imagenet"}
NETWORKS = {"MLP": "mlp", "LeNet": "lenet", "ConvNet": "convnet", "NIN": "nin", "AlexNet": "alexnet",
            "ResNet": "resnet18"}
METHODS = {"Reference": "reference", "Par. Train": "parseval", "Adv. Train I": "advtrain-deepfool",
           "Ours": "deepdefense"}


def number(cell: str) -> float:
    """``98.31%``, ``$1.11 \\times 10^{-1}$`` or ``<b><math>2.25 \\times 10^{-1}</math></b>`` as a float."""
    text = re.sub(r"<[^>]+>|\$|%", "", cell).strip()
    m = re.fullmatch(r"([\d.]+)\s*\\times\s*10\^\{(-?\d+)\}", text)
    return float(m.group(1)) * 10 ** int(m.group(2)) if m else float(text)


def paper_table() -> dict:
    """Table 1 of the paper's text as ``{dataset: {model: {method: (5 numbers)}}}``."""
    lines = PAPER.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Dataset\tNetwork\tMethod"))
    table, dataset, model = {}, None, None
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split("\t")
        dataset = DATASETS.get(cells[0], dataset)
        model = NETWORKS.get(cells[1], model)
        table.setdefault(dataset, {}).setdefault(model, {})[METHODS[cells[2]]] = tuple(number(c) for c in cells[3:])
    return table


def test_table1_is_the_papers_number_for_number():
    printed = paper_table()
    assert sum(len(methods) for models in printed.values() for methods in models.values()) == 20
    assert printed.keys() == paper.TABLE1.keys()
    for dataset, models in printed.items():
        assert models.keys() == paper.TABLE1[dataset].keys()
        for model, methods in models.items():
            assert methods.keys() == paper.TABLE1[dataset][model].keys()
            for method, row in methods.items():
                assert paper.TABLE1[dataset][model][method] == pytest.approx(row, rel=1e-9), (dataset, model, method)


def test_paper_row_names_the_columns():
    row = paper.paper_row("mnist", "lenet", "advtrain-deepfool")
    assert row == {"acc": 99.18, "rho2": 0.263, "fgs_acc@0.2": 95.20, "fgs_acc@0.5": 74.82, "fgs_acc@1.0": 41.40}
    assert paper.paper_row("imagenet", "alexnet", "parseval") is None

"""The training methods as objects (``revnet_app.train.methods``): one class per file in a name → class table,
each owning its flags and defaults (time budget: ≤ 10 s)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import revnet
from revnet_app.train import engine, methods, recipes

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_names_every_method_once_with_its_own_file():
    assert methods.METHODS == ("deepdefense", "clean", "advtrain-deepfool", "advtrain-fgs", "parseval",
                               "deepdefense+fgs")
    assert methods.ALL_METHODS == methods.METHODS + ("pgd-at", "trades", "gradnorm") == tuple(methods.METHOD_CLASSES)
    files = {Path(__import__("inspect").getfile(cls)).name for cls in methods.METHOD_CLASSES.values()}
    assert len(files) == len(methods.ALL_METHODS)  # one file each
    for name, cls in methods.METHOD_CLASSES.items():
        assert cls.name == name and methods.LABELS[name] == cls.label and cls.summary.startswith(name + ":")


def test_every_flag_is_added_once_and_every_setting_has_a_default():
    parser = argparse.ArgumentParser()
    methods.add_all_args(parser)  # argparse raises on a flag added twice
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    assert dests <= set(methods.DEFAULT_SETTINGS)
    with pytest.raises(ValueError, match="unknown method 'pgd'; choose one of: deepdefense"):
        methods.build("pgd")


def test_recipes_take_each_methods_defaults():
    assert recipes.default_settings("lenet", "advtrain-deepfool", "mnist")["lr"] == 2.5e-3
    assert recipes.default_settings("lenet", "deepdefense", "mnist")["c"] == 5.0  # tuned, Deep Defense only
    assert recipes.default_settings("lenet", "deepdefense+fgs", "mnist")["c"] == 25.0
    assert recipes.default_settings("lenet", "advtrain-deepfool", "fashion-mnist")["lr"] == 2e-3  # the dataset's


def test_a_method_step_reports_what_the_loop_sums():
    torch.manual_seed(0)
    net = revnet.Sequential(revnet.Flatten(), revnet.Linear(4, 3)).double()
    x, y = torch.randn(6, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    clean = methods.build("clean").loss(net, x, y)
    ce = F.cross_entropy(net(x), y)
    assert clean.loss.item() == pytest.approx(ce.item()) and clean.ce == pytest.approx(ce.item())
    assert clean.correct == (net(x).argmax(1) == y).sum().item() and math.isnan(clean.ratio)
    dd = methods.build("deepdefense", max_iter=2).loss(net, x, y)
    loss, info = revnet.deep_defense_loss(net, x, y, max_iter=2)
    assert dd.loss.item() == pytest.approx(loss.item()) and dd.ratio == pytest.approx(info.ratio.sum().item())


def test_train_one_epoch_runs_a_method_and_calls_its_after_step():
    calls = []

    class Counting(methods.Method):
        name = "counting"

        def loss(self, net, x, y, generator=None):
            return methods.base.cross_entropy_step(net, x, y)

        def after_step(self, net, generator=None):
            calls.append(generator)

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 2, 2), torch.randint(0, 3, (20,))
    stats = engine.train_one_epoch(net, Counting({}), torch.optim.SGD(net.parameters(), lr=0.1),
                                   engine.tensor_batches(x, y, 5, gen), generator=gen,
                                   progress=engine.EpochProgress(bar=False))
    assert len(calls) == 4 and all(g is gen for g in calls) and set(stats) == {"train_loss", "train_acc", "train_ce"}

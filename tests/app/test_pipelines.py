"""CIFAR-10 and ImageNet end to end on files in the real on-disk formats (time budget: ~2 minutes).

A synthetic CIFAR-10 folder (pickled ``data_batch_1..5``, ``test_batch``, ``batches.meta``, as torchvision's
python version) and an ImageFolder of small JPEGs (``train/<class>/``, ``val/<class>/``) are read by the real
loaders; nothing is mocked. On them every model of the paper fine-tunes for one epoch, every method runs,
``--resume`` after a SIGKILL ends equal to an uninterrupted run, ``evaluate.py`` reads the checkpoints, and bad
input (offline, a truncated batch, an unreadable image, a checkpoint of another input shape) gives one line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import evaluate  # noqa: E402
from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import recipes  # noqa: E402
from helpers import strip_timings  # noqa: E402
from test_datasets import make_batch, py2_pickle  # noqa: E402

from revnet_app import models  # noqa: E402
from revnet import baselines  # noqa: E402

TINY = ["--epochs", "1", "--ref-epochs", "1", "--batch-size", "25", "--max-iter", "2", "--eval-max-iter", "3",
        "--eval-batch-size", "20", "--epoch-eval-samples", "10", "--min-acc-ratio", "0", "--max-train-ce", "1e6", "--no-progress",
        "--no-download", "--lr", "1e-3", "--lmbda", "0.02"]  # λ small: the references are one epoch old
CIFAR_TINY = [*TINY, "--ref-epochs", "5", "--ref-lr", "0.05", "--lmbda", "0.1"]  # convnet's default init learns slowly
# ResNet-18's BatchNorm statistics need ~20 steps of reference training before frozen-BN fine-tuning is stable
IMAGENET_TINY = [*TINY, "--batch-size", "8", "--ref-epochs", "8"]
IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850")


def _learnable(batch: dict, templates: np.ndarray) -> dict:
    """The batch's images half noise, half their class's template (so one epoch learns something)."""
    labels = np.asarray(batch[b"labels"])
    batch[b"data"] = (batch[b"data"] // 2 + templates[labels] // 2).astype(np.uint8)
    return batch


def _cifar(root: Path, per_class: int = 2) -> Path:
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        batch = _learnable(make_batch(rng, per_class, f"training batch {i}")[2], templates)
        (folder / f"data_batch_{i}").write_bytes(py2_pickle(batch))
    batch = _learnable(make_batch(rng, 2, "testing batch 1 of 1")[2], templates)
    (folder / "test_batch").write_bytes(py2_pickle(batch))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"c%d" % i for i in range(10)]}))
    return root


def _imagefolder(root: Path, per_class: dict[str, int] = {"train": 8, "val": 4}) -> Path:
    rng = np.random.default_rng(1)
    for split, n in per_class.items():
        for c, wnid in enumerate(IMAGENET_CLASSES):
            (root / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40 + 4 * i, 48, 3), dtype=np.uint8)
                pixels[:8, :8, c] = 255  # a class signal: a corner patch in one colour channel
                Image.fromarray(pixels).save(root / split / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return _cifar(tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    return _imagefolder(tmp_path_factory.mktemp("imagenet"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("references")


def run(argv: list[str]) -> dict:
    return finetune.main(finetune.get_args_parser().parse_args(argv))


# ------------------------------------------------------------------------------------------------- defaults


def _defaults(argv: list[str]) -> argparse.Namespace:
    args = finetune.get_args_parser().parse_args(argv)
    finetune.check_args(args, finetune.get_args_parser())
    return args


@pytest.mark.parametrize("model, dataset, expected", [
    ("convnet", "cifar10", {"lmbda": 15.0, "c": 25.0, "d": 5.0, "lr_drop_epochs": 10, "parseval_beta": 3e-4,
                            "candidates": 0}),
    ("nin", "cifar10", {"lmbda": 15.0, "c": 70.0, "d": 5.0, "lr_drop_epochs": 10}),
    ("alexnet", "imagenet", {"lmbda": 5.0, "c": 500.0, "d": 5.0, "epochs": 10, "candidates": 10}),
    ("resnet18", "imagenet", {"lmbda": 5.0, "c": 500.0, "d": 5.0, "epochs": 1, "candidates": 10,
                              "lr_drop_epochs": 0}),
    # MNIST: c and λ tuned on validation here (results/sweeps/sweep-lenet-deepdefense.md), the rest the paper's
    ("lenet", "mnist", {"lmbda": 25.0, "c": 5.0, "d": 5.0, "epochs": 10, "lr": 5e-3, "lr_drop_epochs": 1,
                        "ref_epochs": 20, "ref_lr": 0.01}),
    ("mlp", "fashion-mnist", {"epochs": 5, "lr": 5e-3}),
])
def test_the_cli_picks_each_datasets_paper_defaults(model, dataset, expected):
    args = _defaults([model, "--dataset", dataset] if dataset != recipes.default_dataset(model) else [model])
    assert args.dataset == dataset
    assert {k: getattr(args, k) for k in expected} == expected


def test_a_short_run_of_a_recipe_that_halves_for_the_last_10_epochs_halves_for_all_but_the_first():
    assert _defaults(["convnet", "--epochs", "4"]).lr_drop_epochs == 3


def test_help_per_model_documents_its_data_and_defaults():
    for model, needles in {"convnet": ["cifar-10-batches-py", "c 25", "halved for the last 10", "untuned"],
                           "nin": ["c 70"], "alexnet": ["DIR/train/<class>/*.JPEG", "λ 5, c 500", "top-10",
                                                        "10 epochs", "--pretrained"],
                           "resnet18": ["1 epochs", "--dataset cifar10"]}.items():
        if model == "convnet":  # the real command once; the others from the same parser in-process
            text = subprocess.run([sys.executable, str(ROOT / "train" / "finetune.py"), model, "--help"],
                                  capture_output=True, text=True, timeout=60).stdout
        else:
            text = finetune.get_args_parser(model=finetune.model_named([model, "--help"])).format_help()
        assert f"{model}: data and defaults" in text
        for needle in needles:
            assert needle in text, (model, needle)


def test_a_model_on_the_wrong_dataset_and_a_small_crop_are_refused_in_one_line(capsys):
    for argv, needle in [(["convnet", "--dataset", "mnist"], "model 'convnet' runs on cifar10, not mnist"),
                         (["alexnet", "--crop-size", "32"], "--crop-size 32 is too small for alexnet (at least 63")]:
        with pytest.raises(SystemExit):
            _defaults(argv)
        assert needle in capsys.readouterr().err


def test_parseval_covers_the_convolutions_of_the_residual_blocks():
    net = models.build("resnet18", num_classes=10)
    covered = {id(w) for w in baselines.parseval_weights(net)}
    convs = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert "layer1.0.conv1" in convs and "layer4.0.downsample.0" in convs
    assert all(id(net.get_submodule(n).weight) in covered for n in convs)


# ------------------------------------------------------------------------------------------------- CIFAR-10


def test_convnet_runs_every_method_on_cifar10_and_evaluate_reads_the_checkpoint(cifar_root, cache, tmp_path):
    results = {}
    for method in ("deepdefense", "clean", "advtrain-deepfool", "advtrain-fgs", "parseval", "deepdefense+fgs"):
        results[method] = run(["convnet", "--method", method, "--data-dir", str(cifar_root), "--cache-dir",
                               str(cache), "--out", str(tmp_path / method), *CIFAR_TINY])
        assert results[method]["dataset"] == "cifar10" and results[method]["finetuned"]["n"] == 20
    ckpt = models.load(tmp_path / "deepdefense" / "final.pt")[1]
    assert ckpt["input_shape"] == [3, 32, 32] and ckpt["arch_args"] == {}
    assert ckpt["preprocess"]["std"].shape == (3, 1, 1) and ckpt["preprocess"]["mean"].shape == (3, 1, 1)
    assert ckpt["config"]["c"] == 25.0 and ckpt["config"]["lr_drop_epochs"] == 10

    out = evaluate.main(evaluate.get_args_parser().parse_args(
        [str(tmp_path / "deepdefense" / "final.pt"), "--data-dir", str(cifar_root), "--eval-max-iter", "3",
         "--eval-batch-size", "20", "--no-progress", "--output", str(tmp_path / "eval.json")]))
    ft = results["deepdefense"]["finetuned"]
    assert out["dataset"] == "cifar10" and out["n"] == 20
    assert (out["acc"], out["rho2"], out["own_eps_ref"]) == (ft["acc"], ft["rho2"], ft["own_eps_ref"])


def test_nin_fine_tunes_one_epoch_on_cifar10_with_its_c_and_a_balanced_evaluation_subset(cifar_root, cache, tmp_path):
    result = run(["nin", "--data-dir", str(cifar_root), "--cache-dir", str(cache), "--out", str(tmp_path / "nin"),
                  "--train-samples", "25", "--eval-samples", "10", "--eval-subset", "balanced", *CIFAR_TINY])
    assert result["finetuned"]["n"] == 10 and len(result["history"]) == 1
    assert json.loads((tmp_path / "nin" / "config.json").read_text())["args"]["c"] == 70.0


def test_a_truncated_cifar10_batch_and_missing_data_are_one_line_errors(cifar_root, tmp_path):
    broken = _cifar(tmp_path / "broken")
    path = broken / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(path.read_bytes()[:500])
    for data_dir, needle in [(broken, f"CIFAR-10 batch {path} is truncated or unreadable"),
                             (tmp_path / "empty", "CIFAR-10 is not in --data-dir"),
                             (None, "CIFAR-10 needs --data-dir DIR")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as info:
            run(["convnet", *(["--data-dir", str(data_dir)] if data_dir else []), "--out", str(tmp_path / "r"),
                 "--cache-dir", str(tmp_path / "c"), *TINY])
        msg = str(info.value.code)
        assert msg.startswith("error: ") and "\n" not in msg and needle in msg, msg


# ------------------------------------------------------------------------------------------------- ImageNet


def test_alexnet_and_resnet18_fine_tune_on_an_imagefolder(imagenet_root, cache, tmp_path):
    for model, crop in (("alexnet", "63"), ("resnet18", "32")):
        result = run([model, "--data-dir", str(imagenet_root), "--cache-dir", str(cache), "--crop-size", crop,
                      "--out", str(tmp_path / model), "--workers", "0", *IMAGENET_TINY])
        assert result["dataset"] == "imagenet" and result["finetuned"]["n"] == 12
        ckpt = models.load(tmp_path / model / "final.pt")[1]
        assert ckpt["arch_args"] == {"num_classes": 3} and ckpt["input_shape"] == [3, int(crop), int(crop)]
        config = json.loads((tmp_path / model / "config.json").read_text())["args"]
        assert (config["c"], config["d"], config["candidates"]) == (500.0, 5.0, 10)  # λ: TINY's


def test_an_unreadable_image_is_skipped_with_one_warning_and_a_checkpoint_of_another_crop_is_refused(
        imagenet_root, cache, tmp_path, capfd):
    root = _imagefolder(tmp_path / "imagenet", {"train": 4, "val": 2})
    bad = root / "train" / IMAGENET_CLASSES[1] / f"{IMAGENET_CLASSES[1]}_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    result = run(["resnet18", "--data-dir", str(root), "--cache-dir", str(cache), "--crop-size", "32",
                  "--out", str(tmp_path / "run"), "--workers", "0", *IMAGENET_TINY])  # one process: one warning
    assert result["finetuned"]["n"] == 6
    err = capfd.readouterr().err
    assert err.count(f"warning: skipping unreadable image {bad}") == 1

    final = tmp_path / "run" / "final.pt"
    with pytest.raises(SystemExit) as info:  # evaluate.py on MNIST
        evaluate.main(evaluate.get_args_parser().parse_args([str(final), "--dataset", "mnist", "--no-download",
                                                              "--output", str(tmp_path / "e.json")]))
    msg = str(info.value.code)
    assert "takes inputs of shape (3, 32, 32), but --dataset mnist gives (1, 28, 28)" in msg and "\n" not in msg
    with pytest.raises(SystemExit) as info:  # --reference at another crop
        run(["resnet18", "--data-dir", str(root), "--reference", str(final), "--crop-size", "48",
             "--out", str(tmp_path / "run2"), *IMAGENET_TINY])
    assert "takes inputs of shape (3, 32, 32), but --dataset imagenet gives (3, 48, 48)" in str(info.value.code)


def test_pretrained_offline_names_reference_path_and_a_raw_state_dict_needs_its_flag(imagenet_root, tmp_path):
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "hub"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "finetune.py"), "resnet18", "--pretrained",
                           "--data-dir", str(imagenet_root), "--out", str(tmp_path / "p"), "--cache-dir",
                           str(tmp_path / "c"), *IMAGENET_TINY], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --pretrained weights have 1000 classes")  # 3 class folders here

    # with 1000 classes the download is what fails: one line naming --reference PATH
    root = tmp_path / "inet1000"
    buf = tmp_path / "a.JPEG"
    Image.new("RGB", (8, 8)).save(buf)
    for split in ("train", "val"):
        for c in range(1000):  # ImageFolder wants an image in every class folder
            (root / split / f"n{c:08d}").mkdir(parents=True)
            os.link(buf, root / split / f"n{c:08d}" / "a.JPEG")
    proc = subprocess.run([sys.executable, str(ROOT / "train" / "finetune.py"), "resnet18", "--pretrained",
                           "--data-dir", str(root), "--out", str(tmp_path / "p2"), "--cache-dir", str(tmp_path / "c"),
                           *IMAGENET_TINY], capture_output=True, text=True, timeout=120, env=env)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert last.startswith("error: --pretrained: cannot download torchvision's ResNet18_Weights.IMAGENET1K_V1")
    assert "--reference PATH --reference-format torchvision" in last

    raw = tmp_path / "raw.pt"
    torch.save(models.build("resnet18", num_classes=3).state_dict(), raw)
    with pytest.raises(SystemExit) as info:  # a raw state_dict without the flag: a CheckpointError, one line
        run(["resnet18", "--data-dir", str(imagenet_root), "--reference", str(raw), "--crop-size", "32",
             "--out", str(tmp_path / "r1"), *IMAGENET_TINY])
    assert "--reference-format torchvision" in str(info.value.code)
    result = run(["resnet18", "--data-dir", str(imagenet_root), "--reference", str(raw), "--reference-format",
                  "torchvision", "--crop-size", "32", "--out", str(tmp_path / "r2"), *IMAGENET_TINY])
    assert result["finetuned"]["n"] == 12


def test_resume_after_sigkill_mid_epoch_ends_equal_to_an_uninterrupted_run(imagenet_root, cache, tmp_path):
    argv = ["resnet18", "--data-dir", str(imagenet_root), "--crop-size", "32", "--cache-dir", str(cache),
            "--checkpoint-every", "1", *IMAGENET_TINY, "--epochs", "2", "--lr-drop-epochs", "1"]
    script = [sys.executable, str(ROOT / "train" / "finetune.py")]
    whole = subprocess.run([*script, *argv, "--out", str(tmp_path / "whole")], capture_output=True, text=True,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killing = [sys.executable, str(ROOT / "tests" / "finetune_killed.py"), "4"]  # 3 steps per epoch: epoch 2, step 1
    killed = subprocess.run([*killing, *argv, "--out", str(tmp_path / "cut")], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -9
    state = torch.load(tmp_path / "cut" / "resume" / "checkpoint.pt", weights_only=True)
    assert state["mid_epoch"]["epoch"] == 2 and state["mid_epoch"]["step"] == 1
    resumed = subprocess.run([*script, *argv, "--out", str(tmp_path / "cut"), "--resume"], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout and "after step 1 of epoch 2" in resumed.stdout
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    for key in ("reference", "finetuned", "history", "eps_ref"):
        assert strip_timings(a[key]) == strip_timings(b[key]), key
    wa = models.load(tmp_path / "whole" / "final.pt")[0].state_dict()
    wb = models.load(tmp_path / "cut" / "final.pt")[0].state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_users_own_model_fine_tunes_with_model_module_function(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\n\n"
        "def small_cnn():\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),\n"
        "                         nn.Linear(4 * 12 * 12, 10))\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = run(["--model", "mymodels:small_cnn", "--train-samples", "100", "--eval-samples", "40",
                  "--out", str(tmp_path / "own"), "--cache-dir", str(tmp_path / "c"), *TINY])
    assert result["model"] == "mymodels:small_cnn" and result["finetuned"]["n"] == 40
    with pytest.raises(models.CheckpointError, match="pass --model mymodels:small_cnn"):
        models.load(tmp_path / "own" / "final.pt")  # a file never imports code by itself
    net, _ = models.load(tmp_path / "own" / "final.pt", arch="mymodels:small_cnn")
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(SystemExit) as info:
        run(["--model", "mymodels:nothing", "--out", str(tmp_path / "x"), *TINY])
    assert "mymodels has no function 'nothing'" in str(info.value.code)


def test_table1_on_cifar10_writes_the_papers_layout_with_its_numbers(cifar_root, cache, tmp_path):
    from revnet_app.train import table1

    out = tmp_path / "table"
    table1.main(table1.get_args_parser().parse_args(
        ["--dataset", "cifar10", "--models", "convnet", "--methods", "deepdefense", "parseval", "--data-dir",
         str(cifar_root), "--cache-dir", str(cache), "--out", str(out), "--pgd-samples", "10", "--pgd-steps", "2",
         "--minimal-norm-samples", "4", "--ddn-steps", "10", "--cw-binary-steps", "1", "--cw-steps", "10",
         "--saturation-samples", "10", "--saturation-steps", "2", "--autoattack-samples", "4", "--fmn-samples", "4",
         "--no-figure", "--extra", *CIFAR_TINY]))
    text = (out / "table1.md").read_text()
    assert "# Table 1 (cifar10)" in text and "## convnet (20 test images" in text
    assert "| Par. Train |" in text and "| Ours |" in text
    assert "79.74 / 0.0259 / 61.62 / 37.84 / 23.85" in text  # the paper's Reference row, from paper.py
    rows = json.loads((out / "table1.json").read_text())["table"]["convnet"]["rows"]
    assert set(rows) == {"reference", "parseval", "deepdefense"}

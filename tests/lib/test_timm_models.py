"""Tiny instances of timm's models through ``revnet.convert`` (time budget: ≤ 30 s).

The issue's named timm models (ViT, DeiT, ConvNeXt, Swin, EfficientNet, MobileNetV3, RegNetY, DenseNet, ResNet),
each built by ``timm.create_model`` with its own class and block types but small widths and depths, random weights
re-drawn at unit scale, float64, eval mode. ``check_graph_against_autograd``: forward, first order (K = 2) and
second order w.r.t. every weight and x. MobileNetV3's squeeze-excitation gate is ``hard_sigmoid``, for which torch
has no double backward, so its autograd reference stops at first order (``tests/lib/test_rules_hard.py`` checks
Hardsigmoid's second order against a twin). timm's own fused attention (``F.scaled_dot_product_attention``) and
its ``q @ kᵀ`` path (``TIMM_FUSED_ATTN=0``) are both checked on the ViT.
"""

from __future__ import annotations

import pytest
import torch

from helpers import check_graph_against_autograd, randomize_unit_scale

timm = pytest.importorskip("timm", reason="timm is in the test extra: pip install -e '.[test]'")

F64 = torch.float64
TINY = {  # name -> (create_model overrides, input size)
    "vit_tiny_patch16_224": (dict(img_size=16, patch_size=8, embed_dim=8, depth=2, num_heads=2), 16),
    "deit_tiny_patch16_224": (dict(img_size=16, patch_size=8, embed_dim=8, depth=2, num_heads=2), 16),
    "convnext_atto": (dict(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16)), 32),
    "swin_tiny_patch4_window7_224": (dict(img_size=16, patch_size=2, window_size=4, embed_dim=8, depths=(1, 1),
                                          num_heads=(2, 2)), 16),
    "efficientnet_b0": (dict(), 16),
    "mobilenetv3_small_050": (dict(), 16),
    "regnety_002": (dict(), 16),
    "densenet121": (dict(growth_rate=4, block_config=(1, 1), bn_size=2), 16),
    "resnet18": (dict(layers=(1, 1, 1, 1)), 16),
}


@pytest.fixture(autouse=True)
def one_thread_and_math_attention():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with sdpa_kernel(SDPBackend.MATH):
        yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_timm_model_matches_autograd(name):
    overrides, size = TINY[name]
    torch.manual_seed(0)
    model = randomize_unit_scale(timm.create_model(name, pretrained=False, num_classes=5, **overrides).double().eval())
    check_graph_against_autograd(model, torch.randn(2, 3, size, size, dtype=F64), k=2,
                                 second_order=not name.startswith("mobilenetv3"))


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "q-k-transpose"])
def test_timm_attention_paths(fused):
    """timm fixes ``fused_attn`` per module when the model is built; both forms reverse exactly."""
    overrides, size = TINY["vit_tiny_patch16_224"]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, **overrides).double().eval()
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    randomize_unit_scale(model, seed=3)
    check_graph_against_autograd(model, torch.randn(2, 3, size, size, dtype=F64), k=2)


def test_finetune_runs_a_tiny_timm_model_on_a_cifar_format_folder(tmp_path, monkeypatch):
    """``--model timm:create_model --model-args model_name=... ...``: one short epoch of a tiny timm ViT on
    CIFAR-10 batches written in the real format (the synthetic folder of ``test_pipelines``), then the evaluation
    (DeepFool ρ₂, FGS, ε_ref through the ViT's reverse). The epoch is plain cross-entropy: Deep Defense from a
    one-epoch reference diverges by design (see finetune's weak-reference message), which is not what this
    tests; the Deep Defense loss on a ViT is checked against autograd in ``test_modern_models.py``."""

    from revnet_app.train import finetune
    from test_pipelines import TINY as PIPE_TINY, _cifar

    from revnet_app import models

    monkeypatch.chdir(tmp_path)
    root = _cifar(tmp_path / "data")
    result = finetune.main(finetune.get_args_parser().parse_args(
        ["--model", "timm:create_model", "--model-args", "model_name=vit_tiny_patch16_224", "pretrained=False",
         "img_size=32", "patch_size=8", "embed_dim=8", "depth=1", "num_heads=2", "num_classes=10",
         "--dataset", "cifar10", "--data-dir", str(root), *PIPE_TINY, "--method", "clean", "--out", "vit",
         "--cache-dir", "refs"]))
    assert result["finetuned"]["n"] > 0 and result["history"][0]["epoch"] == 1 and result["finetuned"]["rho2"] > 0
    net, ckpt = models.load(tmp_path / "vit" / "final.pt", arch="timm:create_model")
    assert ckpt["arch_args"]["model_name"] == "vit_tiny_patch16_224" and ckpt["arch_args"]["depth"] == 1

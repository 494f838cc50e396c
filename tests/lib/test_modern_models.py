"""Tiny instances of torchvision's modern families through ``revnet.convert`` (time budget: ≤ 60 s).

Each model is a small instance of the family's own class (never the full-size model), in float64 and eval mode,
with every weight re-drawn at unit scale (ViT zero-initialises its head, ConvNeXt's layer scale starts at 1e-6:
default weights would let a wrong rule pass). ``check_graph_against_autograd``: the traced forward equals the
model's, the reverse of K = 3 cotangents equals autograd's VJPs, and the gradients of a loss on the reverse
w.r.t. every weight and x equal double backprop. Deep Defense itself (DeepFool's perturbations, the loss and
every weight gradient, with misclassified samples) is checked on the ViT and the ConvNeXt against the autograd
reference. The full-size models are ``benchmarks/torchvision_coverage.py``'s job.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import convnext, densenet, maxvit, regnet, shufflenetv2, swin_transformer, vision_transformer

import revnet
from autograd_reference import reference_deep_defense_loss
from helpers import check_graph_against_autograd, randomize_unit_scale

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread_and_math_attention():
    """Small float64 kernels run faster on one thread (far faster when the cores are busy); the autograd
    reference runs torch's attention in its math backend, since the fused CPU kernel has no double backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with sdpa_kernel(SDPBackend.MATH):
        yield
    torch.set_num_threads(threads)


def vit() -> nn.Module:
    return vision_transformer.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=8, mlp_dim=16, num_classes=5)


def convnext_tiny() -> nn.Module:
    cfg = convnext.CNBlockConfig
    return convnext.ConvNeXt([cfg(8, 16, 1), cfg(16, None, 1)], stochastic_depth_prob=0.1, num_classes=5)


def maxvit_tiny() -> nn.Module:
    return maxvit.MaxVit(input_size=(16, 16), stem_channels=8, partition_size=2, block_channels=[8],
                         block_layers=[1], head_dim=4, stochastic_depth_prob=0.1, num_classes=5)


def densenet_tiny() -> nn.Module:
    return densenet.DenseNet(growth_rate=4, block_config=(1, 1), num_init_features=8, bn_size=2, num_classes=5)


def regnet_tiny() -> nn.Module:
    params = regnet.BlockParams.from_init_params(depth=2, w_0=8, w_a=8.0, w_m=2.0, group_width=4, se_ratio=0.25)
    return regnet.RegNet(params, num_classes=5, stem_width=8)


def shufflenet_tiny() -> nn.Module:
    return shufflenetv2.ShuffleNetV2([1, 1, 1], [8, 8, 16, 32, 32], num_classes=5)


def swin_tiny(v2: bool) -> nn.Module:
    """Windows of 2 on 6 × 5 patches (v1) or 8 × 8 (v2): padding (5 is odd), shifted windows with their mask, patch merging with its
    padding, and for v2 the cosine attention (``F.normalize``) and the position-bias MLP."""
    extra = dict(block=swin_transformer.SwinTransformerBlockV2,
                 downsample_layer=swin_transformer.PatchMergingV2) if v2 else {}
    return swin_transformer.SwinTransformer(patch_size=[4, 4], embed_dim=8, depths=[2, 1], num_heads=[2, 2],
                                            window_size=[2, 2], stochastic_depth_prob=0.1, num_classes=5, **extra)


FAMILIES = {"vit": (vit, (16, 16)), "convnext": (convnext_tiny, (16, 16)), "maxvit": (maxvit_tiny, (16, 16)),
            "densenet": (densenet_tiny, (16, 16)), "regnet-se": (regnet_tiny, (16, 16)),
            "shufflenet": (shufflenet_tiny, (16, 16)), "swin": (lambda: swin_tiny(False), (24, 20)),
            "swin-v2": (lambda: swin_tiny(True), (32, 32))}  # v2 unpadded: autograd's F.normalize gives NaN at zero rows


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tiny_family_instance_matches_autograd(name):
    build, (height, width) = FAMILIES[name]
    torch.manual_seed(0)
    model = randomize_unit_scale(build().double().eval())
    check_graph_against_autograd(model, torch.randn(2, 3, height, width, dtype=F64))


@pytest.mark.parametrize("name", ["vit", "convnext", "swin"])
def test_deep_defense_on_a_transformer_and_convnext_matches_autograd(name):
    build, size = FAMILIES[name]
    torch.manual_seed(0)
    model = randomize_unit_scale(build().double().eval(), seed=1)
    net = revnet.convert(model)
    x = torch.randn(6, 3, *size, dtype=F64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = torch.where(torch.arange(6) % 2 == 0, pred, (pred + 1) % 5)  # half right, half misclassified
    ours, info = revnet.deep_defense_loss(net, x, y, lmbda=1.0, c=5.0, d=5.0, max_iter=3)
    theirs, ref = reference_deep_defense_loss(model, x, y, lmbd=1.0, c=5.0, d=5.0, max_iter=3)
    assert 0 < int(ref["correct"].sum()) < len(y)
    torch.testing.assert_close(info.ratio, ref["ratio"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    params = list(model.parameters())
    for p, a, b in zip(params, torch.autograd.grad(ours, params), torch.autograd.grad(theirs, params)):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-11)
    delta, _ = revnet.deepfool(net, x, max_iter=3)
    from autograd_reference import reference_deepfool
    ref_delta, _ = reference_deepfool(model, x, max_iter=3)
    torch.testing.assert_close(delta, ref_delta, rtol=1e-9, atol=1e-12)


def test_stochastic_depth_follows_the_mode_in_a_convnext():
    """ConvNeXt's StochasticDepth draws per-sample masks in training mode: the converted network's training
    forward equals the model's under the same seed, and its reverse equals autograd's with that mask."""
    torch.manual_seed(0)
    model = randomize_unit_scale(convnext_tiny().double())
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    net = revnet.convert(model)
    x = torch.randn(4, 3, 16, 16, dtype=F64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        y, tape = net.trace(x)
    xr = x.clone().requires_grad_(True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        expected = model(xr)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    v = torch.randn(4, 5, dtype=F64)
    torch.testing.assert_close(net.reverse(v, tape), torch.autograd.grad(expected, xr, v)[0], rtol=1e-10, atol=1e-12)
    masks = [m for m in net.noise(tape).values() if m is not None] if isinstance(net.noise(tape), dict) else []
    assert masks, "the StochasticDepth masks are kept as the tape's noise"

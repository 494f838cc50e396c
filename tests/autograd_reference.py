"""Independent oracles for the attack, loss and metric tests, written with ``torch.autograd`` and sharing no
code with revnet's attacks.

The DeepFool here is the naive one: the full batch runs every iteration (finished samples are masked, not
removed), every class gradient comes from its own ``torch.autograd.grad`` call (``create_graph=True`` when
differentiable), and the candidate choice runs in the graph (its argmin is piecewise constant anyway).
It runs on plain ``torch.nn`` modules (see ``helpers.plain_copy``).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import revnet  # only for the shared test networks at the bottom; the oracles use plain torch.nn modules


def _floor(dtype: torch.dtype) -> float:
    # the same guard the spec asks of revnet: norms clamped at finfo(dtype).eps²
    return torch.finfo(dtype).eps ** 2


def _per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1)


def _class_gradients(out: Tensor, point: Tensor, create_graph: bool) -> Tensor:
    """(N, C, *in): ∂out[:, c]/∂point for each class c, one autograd call per class."""
    grads = [
        torch.autograd.grad(out[:, c].sum(), point, create_graph=create_graph, retain_graph=True)[0]
        for c in range(out.shape[1])
    ]
    return torch.stack(grads, 1)


def reference_deepfool(
    model: nn.Module,
    x: Tensor,
    *,
    target: Optional[Tensor] = None,
    max_iter: int = 50,
    overshoot: float = 0.02,
    candidates: Optional[int] = None,
    differentiable: bool = False,
    early_stop: bool = True,
) -> tuple[Tensor, dict]:
    """Naive DeepFool: returns ``(delta, {"success", "iterations", "label", "original_label"})``.
    ``early_stop=False``: only targeted samples already at their target stop (before the first step)."""
    n = len(x)
    base = x.detach().requires_grad_(True)  # gradients are taken w.r.t. points built on this leaf
    with torch.no_grad():
        clean = model(x)
    num_classes = clean.shape[1]
    original = clean.argmax(1)
    if target is None:
        target = torch.full((n,), -1, dtype=torch.long)
    targeted = target >= 0
    allowed = torch.ones(n, num_classes, dtype=torch.bool)
    if candidates is not None:
        allowed = torch.zeros(n, num_classes, dtype=torch.bool)
        allowed[torch.arange(n)[:, None], clean.topk(candidates, dim=1).indices] = True
    r_tot = torch.zeros_like(x)
    iterations = torch.zeros(n, dtype=torch.long)
    running = torch.ones(n, dtype=torch.bool)
    label = original.clone()
    shape = (n,) + (1,) * (x.dim() - 1)
    for it in range(max_iter + 1):
        point = base + (1 + overshoot) * r_tot
        out = model(point)
        label = out.detach().argmax(1)
        reached = torch.where(targeted, label == target, label != original)
        if early_stop or it == 0:
            running = running & ~reached
        if it == max_iter or not running.any():
            break
        grads = _class_gradients(out, point, differentiable)  # (N, C, *in)
        away = torch.where(targeted, label, original)
        idx = torch.arange(n)
        w_away = grads[idx, away]
        f_away = out[idx, away]
        # untargeted: nearest linearised boundary over the allowed classes other than l
        dist = torch.full((n, num_classes), float("inf"), dtype=x.dtype)
        for c in range(num_classes):
            w_c = grads[:, c] - w_away
            d_c = (out[:, c] - f_away).abs().detach() / _per_sample_norm(w_c.detach()).clamp_min(_floor(x.dtype))
            ok = allowed[:, c] & (away != c)
            dist[:, c] = torch.where(ok, d_c, dist[:, c])
        toward = torch.where(targeted, target, dist.argmin(1))
        w = grads[idx, toward] - w_away
        f = (out[idx, toward] - f_away).abs()
        norm = _per_sample_norm(w).clamp_min(_floor(x.dtype))
        r = (f / norm**2).reshape(shape) * w
        r_tot = r_tot + torch.where(running.reshape(shape), r, torch.zeros_like(r))
        iterations = iterations + running.long()
        if not differentiable:
            r_tot = r_tot.detach()
    success = torch.where(targeted, label == target, label != original)
    delta = (1 + overshoot) * r_tot
    if not differentiable:
        delta = delta.detach()
    return delta, {"success": success, "iterations": iterations, "label": label, "original_label": original}


def reference_deep_defense_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lmbd: float = 15.0,
    c: float = 25.0,
    d: float = 5.0,
    max_iter: int = 5,
    overshoot: float = 0.02,
    reg_model: Optional[nn.Module] = None,
) -> tuple[Tensor, dict]:
    """Eq. 6 of the paper with the naive DeepFool. ``reg_model``: the model the regularizer is computed on
    (default ``model``); pass a copy that shares only some layers with ``model`` to restrict its gradient."""
    reg_model = model if reg_model is None else reg_model
    logits = model(x)
    ce = F.cross_entropy(logits, y)
    correct = logits.detach().argmax(1) == y
    target = torch.where(correct, torch.full_like(y, -1), y)
    delta, info = reference_deepfool(
        reg_model, x, target=target, max_iter=max_iter, overshoot=overshoot, differentiable=True
    )
    ratio = _per_sample_norm(delta) / _per_sample_norm(x)
    terms = torch.where(correct, torch.exp(-c * ratio), torch.exp(d * ratio))
    reg = terms.sum() / len(x)
    extra = {"ce": ce.detach(), "reg": reg.detach(), "ratio": ratio.detach(), "correct": correct}
    return ce + lmbd * reg, {**extra, **info}


def reference_ce_input_gradient(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    xr = x.detach().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(xr), y), xr)[0]


# ----------------------------------------------------------------------------------------------------------
# Shared test networks: small MLP- and LeNet-shaped revnet networks (float64) and a small trained classifier
# (plain autograd training, well under a second).


def mlp_net(seed: int = 0):
    """Flatten, 36 -> 16 -> 8 -> 5 with ReLUs; input (N, 1, 6, 6)."""
    torch.manual_seed(seed)
    return revnet.Sequential(
        nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5)
    ).to(torch.float64)


def lenet_net(seed: int = 0):
    """conv, maxpool, conv, maxpool, flatten, linear, relu, linear; input (N, 1, 14, 14), 5 classes."""
    torch.manual_seed(seed)
    return revnet.Sequential(
        nn.Conv2d(1, 3, 3), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5),
    ).to(torch.float64)


NETS = {"mlp": (mlp_net, (1, 6, 6)), "lenet": (lenet_net, (1, 14, 14))}  # builder, per-sample input shape


def blobs(
    n: int, dim: int, classes: int, seed: int, spread: float = 3.0, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """``n`` points from ``classes`` unit Gaussian blobs in ``dim`` dimensions whose centers are drawn with
    standard deviation ``spread`` (3: nearly separable; 1.5: a few percent overlap)."""
    gen = torch.Generator().manual_seed(seed)
    centers = spread * torch.randn(classes, dim, generator=gen, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, dim, generator=gen, dtype=dtype)
    return x, y


def train_mlp(x: Tensor, y: Tensor, hidden: int = 32, steps: int = 150, seed: int = 0) -> nn.Sequential:
    """A ``Linear-ReLU-Linear`` classifier trained full-batch with Adam (plain ``torch.nn``)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, int(y.max()) + 1))
    model = model.to(x.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()

MIXED_SEEDS = {"mlp": 3, "lenet": 5}  # batches with correct and wrong samples stopping at different iterations


def mixed_batch(kind: str):
    """A random float64 network of ``NETS[kind]`` and 10 inputs, half of them labelled with a class other than the
    clean prediction (so a batch holds both correctly and wrongly classified samples)."""
    make, shape = NETS[kind]
    seed = MIXED_SEEDS[kind]
    net = make(seed).eval()
    x = torch.randn(10, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = pred.clone()
    y[1::2] = (pred[1::2] + 1 + torch.arange(5) % 4) % 5
    return net, x, y

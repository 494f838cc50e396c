"""``advtrain-deepfool``: Adv. Train I, the cross-entropy on DeepFool examples generated once from the reference
(alone, the DeepFool paper's choice, or added to the clean set: ``--advtrain-set``)."""

from __future__ import annotations

import time
from pathlib import Path

import torch

import revnet
from revnet_app import models

from .. import distributed, utils
from .base import Method, cross_entropy_step


class AdvTrainDeepFool(Method):
    name, label = "advtrain-deepfool", "Adv. Train I"
    summary = ("advtrain-deepfool: Adv. Train I, CE on DeepFool examples generated once from the reference (see "
               "--advtrain-set)")
    model_defaults = {"mlp": {"lr": 2e-2}, "lenet": {"lr": 2.5e-3}}  # chosen with train/sweep.py (README)
    needs_train_tensors = True

    @staticmethod
    def add_args(p) -> None:
        p.add_argument("--advtrain-set", default="perturbed", choices=("perturbed", "perturbed+clean"),
                       help="advtrain-deepfool: train on the DeepFool examples only (the DeepFool paper's choice: "
                            "'only on the perturbed training set') or on them added to the clean training set")
        p.add_argument("--advtrain-max-iter", type=int, default=50,
                       help="advtrain-deepfool: DeepFool iterations when generating the training examples")

    def prepare(self, train_x, train_y, *, ref_net, out: Path, batch_size: int, **context):
        """Adv. Train I's training set: DeepFool examples of the training images, generated once from the
        reference model (cached in ``out/advtrain_set.pt`` so a resumed run reuses them), alone or added to the
        clean set. Returns ``(x, y, info)``."""
        s, clip = self.settings, self.settings.get("clip")
        path = out / "advtrain_set.pt"
        if path.exists():
            try:
                cached = models.load_state(path, ("x_adv", "fooled"), map_location=train_x.device,
                                           what="DeepFool set", shapes={"x_adv": tuple(train_x.shape),
                                                                        "fooled": (len(train_x),)})
            except models.CheckpointError as exc:
                raise SystemExit(f"error: {exc} Delete {path} to generate the DeepFool examples again.") from None
            x_adv, fooled = cached["x_adv"], cached["fooled"]
            utils.say(f"DeepFool training examples: reusing {path}")
        else:
            utils.say(f"generating DeepFool examples of {len(train_y)} training images from the reference ...")
            t0 = time.perf_counter()
            x_adv, fooled = revnet.baselines.deepfool_adversarial_set(
                ref_net.eval(), train_x, max_iter=s["advtrain_max_iter"], overshoot=s["overshoot"],
                batch_size=batch_size, clip=clip)
            utils.say(f"  done in {time.perf_counter() - t0:.0f} s")
            if distributed.current().main:  # every rank generates the same set; rank 0 keeps it
                models.save_atomic({"x_adv": x_adv, "fooled": fooled}, path)
        ratio = (x_adv - train_x).flatten(1).norm(dim=1) / train_x.flatten(1).norm(dim=1).clamp_min(1e-12)
        info = {"set": s["advtrain_set"], "n_adversarial": len(x_adv),
                "fooled_fraction": fooled.float().mean().item(), "mean_ratio": ratio.mean().item()}
        if s["advtrain_set"] == "perturbed+clean":
            return torch.cat([train_x, x_adv]), torch.cat([train_y, train_y]), info
        return x_adv, train_y, info

    def loss(self, net, x, y, generator=None):
        return cross_entropy_step(net, x, y)

    def uses(self, flag: str) -> bool:
        return flag in ("advtrain_set", "advtrain_max_iter", "overshoot")

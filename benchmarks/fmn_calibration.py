"""How well foolbox's L2 FMN finds minimal perturbations here, and why train/library_attacks.py repairs and seeds it.

    python benchmarks/fmn_calibration.py --reference runs/references/mlp-mnist-856c797b272a-e20-lr0.01-b100-s0.pt \
        --data-dir ../shared/data

On the first ``--images`` MNIST test images (clean predictions as labels, [0, 1] box) it runs foolbox's
L2DeepFool (50 steps), DDN (300 steps), Carlini-Wagner (1,000 steps), the stock L2FMN from a noise-blend start,
and the repaired FMN from the clean image, from a noise blend and from a 30-step DDN start (100 steps each), and
writes the median pixel-space ‖Δx‖₂ and success rate of each to ``--output``/fmn-calibration.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from revnet_app.benchmarks import SCRATCH

ROOT = Path(__file__).resolve().parents[1]

from revnet_app.train import normalization  # noqa: E402
from revnet_app.train import library_attacks as lib  # noqa: E402
from revnet_app.train import pipeline as pipeline_lib  # noqa: E402

from revnet_app import models  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--reference", required=True, help="a checkpoint (models.load format) to attack")
    p.add_argument("--data-dir", default=None, help="MNIST in torchvision's layout (unset: the embedded subset)")
    p.add_argument("--images", type=int, default=10, help="first N test images")
    p.add_argument("--output", default=SCRATCH, help="folder for fmn-calibration.{json,md} (default %(default)s, a scratch folder; pass --output benchmarks/results to update the committed results)")
    args = p.parse_args()
    if lib.missing("fmn"):
        raise SystemExit("error: foolbox is not installed: pip install -e '.[test]'")
    import foolbox

    net, ckpt = models.load(args.reference)
    pipe = pipeline_lib.load_pipeline("mnist", args.data_dir, download=False, crop=224)
    raw = torch.stack([pipe.test_set[i][0] for i in range(args.images)])
    x01 = lib.to_pixels(normalization.preprocess(raw, ckpt["preprocess"]), ckpt["preprocess"], pipe.raw_max)
    fmodel = foolbox.PyTorchModel(lib.PixelModel(net, ckpt["preprocess"], pipe.raw_max).eval(), bounds=(0.0, 1.0))
    with torch.no_grad():
        labels = fmodel(x01).argmax(1)
    crit = foolbox.criteria.Misclassification(labels)
    noise = foolbox.attacks.LinearSearchBlendedUniformNoiseAttack(distance=foolbox.distances.l2)
    repaired = type(lib.l2_fmn_attack(1))
    attacks = {
        "DeepFool (foolbox, 50 steps)": lambda: foolbox.attacks.L2DeepFoolAttack(steps=50, overshoot=0.02)(fmodel, x01, crit, epsilons=None),
        "DDN (300 steps)": lambda: foolbox.attacks.DDNAttack(steps=300)(fmodel, x01, crit, epsilons=None),
        "Carlini-Wagner (1,000 steps)": lambda: foolbox.attacks.L2CarliniWagnerAttack(steps=1000, stepsize=0.05)(fmodel, x01, crit, epsilons=None),
        "stock L2FMN from a noise blend (300 steps)": lambda: foolbox.attacks.L2FMNAttack(steps=300, init_attack=noise)(fmodel, x01, crit, epsilons=None),
        "repaired FMN from the clean image (1,000 steps)": lambda: repaired(steps=1000)(fmodel, x01, crit, epsilons=None),
        "repaired FMN from a noise blend (300 steps)": lambda: repaired(steps=300, init_attack=noise)(fmodel, x01, crit, epsilons=None),
        "repaired FMN from DDN-30 (100 steps; library_attacks)": lambda: repaired(steps=100, init_attack=foolbox.attacks.DDNAttack(steps=30))(fmodel, x01, crit, epsilons=None),
    }
    rows = {}
    for name, attack in attacks.items():
        t0 = time.perf_counter()
        _, adv, ok = attack()
        norms = torch.linalg.vector_norm((adv - x01).flatten(1), dim=1)
        norms = torch.where(ok, norms, torch.full_like(norms, float("inf")))
        rows[name] = {"median": statistics.median(norms.tolist()), "success": ok.float().mean().item(),
                      "seconds": time.perf_counter() - t0}
        print(f"{name}: median {rows[name]['median']:.4f}, success {rows[name]['success']:.0%}", flush=True)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fmn-calibration.json").write_text(json.dumps({"config": vars(args), "rows": rows}, indent=1))
    lines = ["# FMN calibration: minimal L2 perturbations (pixel space) on the first "
             f"{args.images} MNIST test images of {args.reference}", "",
             f"`python benchmarks/fmn_calibration.py --reference {args.reference}"
             + (f" --data-dir {args.data_dir}" if args.data_dir else "") + "`; clean predictions as labels, "
             "[0, 1] box; inf = no adversarial found (the median then counts it as infinitely robust).", "",
             "| attack | median ‖Δx‖₂ | success | seconds |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {k} | {v['median']:.4f} | {v['success']:.0%} | {v['seconds']:.1f} |" for k, v in rows.items()]
    (out / "fmn-calibration.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'fmn-calibration.md'}")


if __name__ == "__main__":
    main()

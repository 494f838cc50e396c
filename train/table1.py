"""The paper's Table 1: every fine-tuning method from the same reference model, evaluated side by side.

Example::

    python train/table1.py --dataset mnist --models mlp lenet --seeds 0 --data-dir ../shared/data \\
        --out runs/table1-mnist
    python train/table1.py --dataset fashion-mnist     # after: apt-get install dataset-fashion-mnist
    python train/table1.py --dataset cifar10 --data-dir DIR      # convnet, nin (DIR/cifar-10-batches-py/)
    python train/table1.py --dataset imagenet --data-dir DIR --extra --pretrained   # alexnet, resnet18

For every model and seed, ``finetune.py`` runs once per method (``--methods``; each with its default recipe,
chosen on a validation split) from the same cached reference model. Runs that already finished are reused
(after checking that their configuration matches), unfinished ones are resumed. Then:

* ε_ref is the FGS step at which the *Deep Defense* model's accuracy drops to 50%; every row (the reference
  included) is evaluated with FGS at 0.2/0.5/1.0·ε_ref on all test images;
* accuracy and DeepFool ρ₂ come from each run's final evaluation (all test images);
* a sanity column: accuracy under an L2 PGD attack (``--pgd-steps`` steps, no random start) at ε = the
  reference's median DeepFool ‖Δx‖₂ on the first ``--pgd-samples`` test images. If Deep Defense only masked
  gradients, PGD would not find the larger perturbations that DeepFool reports;
* the library attacks (AutoAttack-L2, FMN-L2), the box-constrained minimal norms (DDN, C&W) and the saturation
  check (``evaluation_columns.py``); under each model the ratios of Ours to the reference under ρ₂, DDN, C&W and
  FMN, and a warning line for each saturated row.

Writes ``table1.md`` and ``table1.json`` to ``--out``: the paper's rows in its order (Reference, Par. Train,
Adv. Train I, Ours), then Clean, Adv. Train II and Ours+FGS, which are not in the paper's Table 1; with several
seeds, mean ± sd. The paper's numbers (MNIST) stand beside ours. Then Figure 2 of the first seed's runs
(``figure2-<dataset>.png``/``.json``, as ``figures.py figure2`` draws it) unless ``--no-figure``.
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import torch


from revnet_app.train import engine  # noqa: E402
from revnet_app.train import evaluation_columns  # noqa: E402
from revnet_app.train import figures  # noqa: E402
from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import library_attacks  # noqa: E402
from revnet_app.train import pipeline as pipeline_lib  # noqa: E402
from revnet_app.train import recipes  # noqa: E402
from revnet_app.train import utils  # noqa: E402
from revnet_app.train.table1_report import BOX_OURS, COLUMNS, PAPER_OURS, fmt, markdown, paper_row  # noqa: E402,F401
from revnet_app.train.methods import ALL_METHODS, EXTRA_ROWS, METHODS, MODERN_ROWS, PAPER_ROWS  # noqa: E402

from revnet_app import models  # noqa: E402
import revnet  # noqa: E402

# finetune.py flags that must agree between a stored run and the one asked for, so a reused run is the same run
CHECKED_ARGS = ["model", "method", "dataset", "seed", "epochs", "lr", "lmbda", "c", "d", "max_iter", "alpha",
                "fgs_eps", "parseval_beta", "parseval_fraction", "advtrain_set", "train_samples", "eval_samples",
                "batch_size", "ref_epochs", "ref_lr", "deepfool_box", "pgd_eps", "pgd_steps", "pgd_step_size",
                "no_random_start", "trades_beta", "gradnorm_lambda"]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The paper's Table 1: all methods from one reference, side by side.",
                                add_help=add_help, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=pipeline_lib.DATASETS,
                   help="dataset; fashion-mnist has its own fine-tuning defaults (MLP 5 epochs at lr 5e-3, LeNet 3 "
                        "at 2e-3, every method; see finetune.py --help) and, without --data-dir, takes the files of "
                        "`apt-get install dataset-fashion-mnist`; cifar10 and imagenet need --data-dir and take the "
                        "paper's defaults of finetune.py (λ, c, d; imagenet: pass --extra --pretrained)")
    p.add_argument("--models", nargs="+", default=None,
                   help="architectures (default: mlp lenet on MNIST/Fashion-MNIST, convnet nin on cifar10, alexnet "
                        "resnet18 on imagenet)")
    p.add_argument("--methods", nargs="+", default=None, choices=ALL_METHODS,
                   help="fine-tuning methods (deepdefense is always run: it defines ε_ref; default: all, on imagenet "
                        "deepdefense only, as the paper)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (reference and fine-tuning)")
    p.add_argument("--data-dir", default=None, help="as in finetune.py")
    p.add_argument("--crop-size", type=int, default=224, help="imagenet: as in finetune.py")
    p.add_argument("--out", default=None, help="folder for the runs and the table (default runs/table1-<dataset>)")
    p.add_argument("--cache-dir", default="runs/references", help="reference cache, as in finetune.py")
    p.add_argument("--pgd-samples", type=int, default=500, help="test images attacked with L2 PGD")
    p.add_argument("--pgd-steps", type=int, default=20, help="L2 PGD steps (step size 2.5·ε/steps)")
    library_attacks.add_flags(p, autoattack_samples=100, fmn_samples=500, eps="the PGD ε")
    evaluation_columns.add_flags(p, samples=500, eps="the PGD ε")
    p.add_argument("--no-figure", action="store_true",
                   help="do not draw Figure 2 (accuracy and rho2 per epoch, first seed) into --out at the end")
    p.add_argument("--box-ours", action="store_true",
                   help="add the row Ours (box-aware): Deep Defense with --deepfool-box (its regularizer's DeepFool "
                        "keeps x + Δx in the valid pixel box; issue 32), beside the unconstrained one")
    p.add_argument("--method-flags", nargs="+", default=[], metavar="METHOD=FLAGS",
                   help="further finetune.py flags for one method's runs only, one quoted argument per method, e.g. "
                        "'trades=--trades-beta 1 --lr 0.01 --epochs 30' (the setting a validation sweep chose, "
                        "train/sweep.py); they come after --extra, so they win over it")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further finetune.py flags for every run, e.g. --epochs 3 (put last)")
    return p


def run_argv(model: str, method: str, seed: int, run_dir: Path, args: argparse.Namespace) -> list[str]:
    if method == PAPER_OURS:  # Deep Defense with the paper's c and λ instead of the tuned defaults
        paper_cl = recipes.paper_c_lmbda(args.dataset, model)
        return [*run_argv(model, "deepdefense", seed, run_dir, args), "--c", f"{paper_cl['c']:g}",
                "--lmbda", f"{paper_cl['lmbda']:g}"]
    if method == BOX_OURS:  # Deep Defense whose regularizer's DeepFool stays in the pixel box
        return [*run_argv(model, "deepdefense", seed, run_dir, args), "--deepfool-box"]
    return [model, "--method", method, "--dataset", args.dataset, "--seed", str(seed), "--out", str(run_dir),
            "--cache-dir", args.cache_dir, "--resume", "--no-progress",
            *(["--crop-size", str(args.crop_size)] if args.dataset == "imagenet" else []),
            *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra,
            *method_flags(args).get(method, [])]


def method_flags(args: argparse.Namespace) -> dict[str, list[str]]:
    """``--method-flags`` as {method: [flag, value, ...]}; one line naming the item for a malformed one."""
    found: dict[str, list[str]] = {}
    for item in args.method_flags:
        method, sep, flags = item.partition("=")
        if not sep or method not in ALL_METHODS or method in found:
            raise SystemExit(f"error: --method-flags {item!r}: expected METHOD=FLAGS with METHOD one of "
                             f"{', '.join(ALL_METHODS)}, each at most once, e.g. 'trades=--trades-beta 1 --lr 0.01'.")
        found[method] = shlex.split(flags)
    return found


def check_reused(run_dir: Path, argv: list[str]) -> None:
    """Refuse a finished run whose stored flags differ from the ones this table asks for."""
    wanted = finetune.get_args_parser().parse_args(argv)
    finetune.check_args(wanted, finetune.get_args_parser())
    stored = utils.json.loads((run_dir / "config.json").read_text())["args"]
    diff = [f"{k}: stored {stored.get(k)!r}, wanted {getattr(wanted, k)!r}" for k in CHECKED_ARGS
            if k in stored and stored.get(k) != getattr(wanted, k)]
    if diff:
        raise SystemExit(f"error: {run_dir} was run with other settings ({'; '.join(diff)}). "
                         "Delete it or choose another --out.")


def run_method(model: str, method: str, seed: int, args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    """``metrics.json`` of the run (reused, resumed or new) and whether it was reused."""
    run_dir = Path(args.out) / f"{model}-{method}-s{seed}"
    argv = run_argv(model, method, seed, run_dir, args)
    if (run_dir / "metrics.json").is_file():
        check_reused(run_dir, argv)
        return utils.json.loads((run_dir / "metrics.json").read_text()), True
    return finetune.main(finetune.get_args_parser().parse_args(argv)), False


@functools.lru_cache(maxsize=2)
def test_pipeline(dataset: str, data_dir: Optional[str], cwd: str, crop: int) -> pipeline_lib.Pipeline:
    """The dataset's pipeline, read once per table (every row is evaluated on its test images); ``cwd`` is part
    of the cache key because the default data folder is relative."""
    return pipeline_lib.load_pipeline(dataset, data_dir, download=False, crop=crop)


def run_eval_set(run_dir: Path, preprocess: dict, args: argparse.Namespace):
    """The final evaluation set of a run (its ``--eval-samples``/``--eval-subset``, from ``config.json``) with
    ``preprocess``, streamed in batches like ``finetune.py``'s."""
    stored = utils.json.loads((run_dir / "config.json").read_text())["args"]
    run_args = argparse.Namespace(**{"eval_subset": "first", "eval_subset_seed": 0, "workers": 0,
                                     "eval_cache_mb": 2048, "eval_batch_size": 500, **stored})
    pipe = test_pipeline(args.dataset, args.data_dir, os.getcwd(), args.crop_size)
    test_set, _, _ = finetune.eval_sets(run_args, pipe, preprocess, torch.device("cpu"))
    return pipe, test_set


first_images = library_attacks.first_images  # PGD and the PGD radius use it too


def attack_columns(net: torch.nn.Module, test_set, eps_ref: Optional[float], pgd_eps: float,
                   args: argparse.Namespace, clip=None) -> dict[str, float]:
    """FGS accuracies at fractions of ``eps_ref`` (all images of the set) and PGD accuracy (the first
    pgd_samples)."""
    out: dict[str, float] = {}
    if eps_ref is not None:
        net.eval()
        for f in engine.FRACTIONS:
            out[f"fgs_acc@{f}"] = engine.fgs_accuracy_stream(net, test_set, f * eps_ref, clip=clip)
    x, y = first_images(test_set, args.pgd_samples)
    out["pgd_acc"] = revnet.metrics.pgd_accuracy(net, x, y, pgd_eps, steps=args.pgd_steps)
    return out


def library_columns(net: torch.nn.Module, test_set, pgd_eps: float, preprocess: dict, raw_max: float,
                    args: argparse.Namespace) -> dict[str, Any]:
    """AutoAttack-L2 accuracy at the PGD ε (first ``--autoattack-samples`` images) and the median FMN-L2
    ‖Δx‖/‖x‖ (first ``--fmn-samples``); "not installed" / "not run" where they cannot be or were not asked."""
    net.eval()
    found = library_attacks.metrics(
        net, test_set, preprocess, raw_max, autoattack_samples=args.autoattack_samples, autoattack_eps=pgd_eps,
        fmn_samples=args.fmn_samples, fmn_steps=args.fmn_steps, fmn_init_steps=args.fmn_init_steps,
        seed=args.attack_seed, progress=True)
    return {col: found.get(col, "not run") for col in ("aa_acc", "fmn_median")}


def evaluate_row(run_dir: Path, which: str, eps_ref: float, pgd_eps: float, n: int,
                 args: argparse.Namespace) -> dict[str, float]:
    """The attack columns of ``final.pt`` (``which="finetuned"``) or of the run's reference; cached in the run
    directory (``table1_eval.json``), keyed by the ε values and sample counts."""
    key = f"{which}|eps_ref={eps_ref!r}|pgd_eps={pgd_eps!r}|n={n}|pgd={args.pgd_samples}x{args.pgd_steps}"
    cache_path = run_dir / "table1_eval.json"
    cache = utils.json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    lib_key = (f"{which}|pgd_eps={pgd_eps!r}|aa={args.autoattack_samples}|seed={args.attack_seed}|"
               f"fmn={args.fmn_samples}x{args.fmn_steps}+ddn{args.fmn_init_steps}")
    box_key = f"{which}|" + evaluation_columns.cache_key(args, pgd_eps)
    missing = [k for k in (key, lib_key, box_key) if k not in cache or "not installed" in cache[k].values()]
    if missing:
        net, ckpt = models.load(reference_path(run_dir) if which == "reference" else run_dir / "final.pt",
                                arch=_user_arch(run_dir))
        pipe, test_set = run_eval_set(run_dir, ckpt["preprocess"], args)
        if key in missing:
            cache[key] = attack_columns(net, test_set, eps_ref, pgd_eps, args)
            utils.write_json(cache_path, cache)  # kept if the library attacks below fail or are killed
        if lib_key in missing:
            cache[lib_key] = library_columns(net, test_set, pgd_eps, ckpt["preprocess"], pipe.raw_max, args)
            utils.write_json(cache_path, cache)
        if box_key in missing:
            found = evaluation_columns.columns(net, test_set, ckpt["preprocess"], pipe.raw_max, args, eps=pgd_eps,
                                               name=f"{run_dir.name} ({which})")
            cache[box_key] = {c: found.get(c, "not run") for c in evaluation_columns.KEYS}
        utils.write_json(cache_path, cache)
    return {**cache[key], **cache[lib_key], **cache[box_key]}


def keep_saturation(kept: dict[str, list], cols: dict[str, Any]) -> None:
    """Add a row's saturation verdict and warning line (if any) to ``kept``."""
    kept["saturated"].append(cols.get("saturated") is True)
    if isinstance(cols.get("saturation_warning"), str) and cols["saturation_warning"] != "not run":
        kept["warnings"].append(cols["saturation_warning"])


def _user_arch(run_dir: Path) -> Optional[str]:
    """The ``module:function`` of a run of a user's own model (``models.load`` needs it named), else ``None``."""
    model = utils.json.loads((run_dir / "config.json").read_text())["args"].get("model", "")
    return model if models.is_user_model(model) else None


def reference_path(run_dir: Path) -> Path:
    """The reference checkpoint a run started from (``config.json``: "cached: PATH", "given: PATH", ...)."""
    origin = utils.json.loads((run_dir / "config.json").read_text())["reference"]
    path = Path(origin.split(": ", 1)[1])
    if not path.is_file():
        raise SystemExit(f"error: the reference of {run_dir} ({path}) is gone; run table1.py from the folder the "
                         "runs were made in, or delete the run to redo it.")
    return path


def reference_pgd_eps(dd_dir: Path, args: argparse.Namespace) -> float:
    """The reference's median DeepFool ‖Δx‖₂ on the first pgd_samples test images."""
    net, ckpt = models.load(reference_path(dd_dir), arch=_user_arch(dd_dir))
    x, _ = first_images(run_eval_set(dd_dir, ckpt["preprocess"], args)[1], args.pgd_samples)
    delta, _ = revnet.deepfool(net, x, max_iter=50)
    return torch.linalg.vector_norm(delta.flatten(1), dim=1).median().item()


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.out is None:
        args.out = f"runs/table1-{args.dataset}"
    if args.models is None:
        args.models = {"cifar10": ["convnet", "nin"], "imagenet": ["alexnet", "resnet18"]}.get(args.dataset,
                                                                                              ["mlp", "lenet"])
    if args.methods is None:
        args.methods = ["deepdefense"] if args.dataset == "imagenet" else list(METHODS)
    if args.pgd_samples < 1 or args.pgd_steps < 1:
        raise SystemExit("error: --pgd-samples and --pgd-steps must be at least 1.")
    evaluation_columns.check_flags(args, get_args_parser())
    for method, flags in method_flags(args).items():  # a bad flag is one line now, not an error per row later
        finetune.check_args(finetune.get_args_parser().parse_args(
            run_argv(args.models[0], method, args.seeds[0], Path(args.out) / "check", args)), finetune.get_args_parser())
    if min(args.autoattack_samples, args.fmn_samples, args.fmn_init_steps) < 0 or args.fmn_steps < 1:
        raise SystemExit("error: --autoattack-samples, --fmn-samples and --fmn-init-steps must not be negative, "
                         "--fmn-steps at least 1.")
    methods = ["deepdefense"] + [m for m in args.methods if m != "deepdefense"]
    if args.dataset in recipes.TUNED_OURS:  # Ours at the tuned defaults and at the paper's c and λ
        methods.insert(1, PAPER_OURS)
    if args.box_ours:
        methods.insert(methods.index("deepdefense") + 1 + (PAPER_OURS in methods), BOX_OURS)
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    start = time.perf_counter()
    jobs = [(model, seed, method) for model in args.models for seed in args.seeds for method in methods]
    finished: dict[tuple[str, int, str], dict[str, Any]] = {}
    failed: dict[tuple[str, int, str], str] = {}
    new_walls: list[float] = []
    for i, (model, seed, method) in enumerate(jobs, 1):
        left = len(jobs) - i + 1
        eta = f", about {left * statistics.mean(new_walls) / 60:.0f} min left" if new_walls else ""
        print(f"[{i}/{len(jobs)}] {model} {method} seed {seed} (elapsed {(time.perf_counter() - start) / 60:.1f} "
              f"min{eta})", flush=True)
        try:
            result, reused = run_method(model, method, seed, args)
        except SystemExit as exc:  # e.g. a diverging run: the table goes on, the row says so
            if method == "deepdefense" or "other settings" in str(exc):
                raise
            print(f"  FAILED: {exc}", flush=True)
            failed[(model, seed, method)] = str(exc)
            continue
        print(f"  {'reused' if reused else 'finished'}: acc {result['finetuned']['acc']:.4f}, "
              f"rho2 {result['finetuned']['rho2']:.4f}", flush=True)
        if not reused:
            new_walls.append(result["wall_seconds"])
        finished[(model, seed, method)] = result

    print("evaluating every row at the Deep Defense model's ε_ref and with L2 PGD ...", flush=True)
    table: dict[str, Any] = {}
    for model in args.models:
        rows: dict[str, dict[str, list[float]]] = {
            m: {c: [] for c in COLUMNS + ["wall_seconds"]} for m in ["reference", *methods]}
        saturation: dict[str, dict[str, list]] = {m: {"saturated": [], "warnings": []} for m in rows}
        eps_refs, pgd_epss = [], []
        n_test = None
        for seed in args.seeds:
            dd = finished[(model, seed, "deepdefense")]
            dd_dir = Path(args.out) / f"{model}-deepdefense-s{seed}"
            eps_ref, n_test = dd["eps_ref"], dd["finetuned"]["n"]
            pgd_eps = reference_pgd_eps(dd_dir, args)
            eps_refs.append(eps_ref)
            pgd_epss.append(pgd_eps)
            ref = {"acc": dd["reference"]["acc"], "rho2": dd["reference"]["rho2"],
                   **evaluate_row(dd_dir, "reference", eps_ref, pgd_eps, n_test, args)}
            for col in COLUMNS:
                rows["reference"][col].append(ref[col])
            keep_saturation(saturation["reference"], ref)
            for method in methods:
                if (model, seed, method) in failed:
                    for col in COLUMNS:
                        rows[method][col].append(float("nan"))
                    rows[method].setdefault("failed", []).append(failed[(model, seed, method)])
                    continue
                result = finished[(model, seed, method)]
                run_dir = Path(args.out) / f"{model}-{method}-s{seed}"
                cols = {"acc": result["finetuned"]["acc"], "rho2": result["finetuned"]["rho2"],
                        **evaluate_row(run_dir, "finetuned", eps_ref, pgd_eps, n_test, args)}
                for col in COLUMNS:
                    rows[method][col].append(cols[col])
                keep_saturation(saturation[method], cols)
                rows[method]["wall_seconds"].append(result["wall_seconds"])
        order = [m for m in (*PAPER_ROWS, PAPER_OURS, BOX_OURS, *EXTRA_ROWS, *MODERN_ROWS) if m in rows]
        table[model] = {"rows": {m: rows[m] for m in order}, "eps_ref": eps_refs, "pgd_eps": pgd_epss,
                        "n_test": n_test, "saturation": {m: saturation[m] for m in order},
                        "paper": {m: paper_row(args.dataset, model, m) for m in order}}
    text = markdown(table, args)
    out = Path(args.out)
    utils.write_text_atomic(out / "table1.md", text)
    utils.write_json(out / "table1.json", {"table": table, "config": vars(args), **utils.environment(),
                                           "wall_seconds": time.perf_counter() - start})
    print(text, flush=True)
    if not args.no_figure:
        figures.figure2(argparse.Namespace(
            figure="figure2", runs=[args.out], from_json=None, models=list(args.models),
            methods=[m for m in methods if m not in (PAPER_OURS, BOX_OURS)],
            seed=args.seeds[0], dataset=args.dataset, out=args.out, dpi=150))
    return table


if __name__ == "__main__":
    main(get_args_parser().parse_args())

"""The paper's hyper-parameter studies on LeNet: Figure 3 (varying c and λ) and Figure 4 (one layer regularized).

Examples (quick versions: 3 fine-tuning epochs per run, evaluated on the first 1,000 test images)::

    python train/studies.py cl --data-dir ../shared/data --out runs/studies
    python train/studies.py layers --data-dir ../shared/data --out runs/studies
    python train/figures.py figure3 --runs runs/studies --out results/figures
    python train/figures.py figure4 --runs runs/studies --out results/figures

Full versions (c = 5, 10, ..., 45 and the final evaluation on all test images; more epochs with ``--epochs N``)::

    python train/studies.py cl --full --epochs 10 --data-dir ../shared/data --out runs/studies-full

Every point of a study is one Deep Defense fine-tuning run of ``finetune.py`` from the same cached reference model:

* ``cl`` (Figure 3): one run per (λ, c) with d fixed (``--d``, 5), in ``<out>/cl/lmbda<λ>-c<c>/``;
* ``layers`` (Figure 4): one run per (layer, c) with λ = 15 and d = 5, only the given layer receiving the
  regularizer's gradient (``finetune.py --reg-layers CHILD``; the cross-entropy reaches every layer), in
  ``<out>/layers/<layer>-c<c>/``. LeNet's layers are conv1, conv2, fc1, fc2 (children 0, 2, 5, 7 of the network);
  other models need ``--layers NAME=CHILD ...``.

Runs that finished (``metrics.json``) are reused after checking that their stored flags (``config.json``) agree
with the wanted ones (c, λ, d, epochs, regularized layers, model, method, seed, evaluation images and the
training recipe); a mismatch is an error naming the run and the flags. Unfinished runs are resumed
(``--resume``). ``--extra`` passes further ``finetune.py`` flags to every run; they come after the study's own
flags, so on a flag that both give (``--epochs``, ``--eval-samples``, ``--epoch-eval-samples``, ``--data-dir``,
``--cache-dir``) ``--extra`` wins, as argparse keeps the last value. The flags that define a point or its run
directory (``--c``, ``--lmbda``, ``--d``, ``--reg-layers``, ``--method``, ``--seed``, ``--out``) cannot be changed
through ``--extra``.

Writes ``<out>/<study>.json`` (every point with its grid values, test accuracy, ρ₂, test images, wall time and run
directory; the reference model's accuracy and ρ₂ on the same test images; the configuration and environment) and
``<out>/<study>.md`` (the same as a Markdown table). ``figures.py figure3/figure4`` plot them.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path
from typing import Any


from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import utils  # noqa: E402

from revnet_app import models  # noqa: E402

QUICK_CS = [5.0, 15.0, 25.0, 35.0, 45.0]
FULL_CS = [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0]
LMBDAS = [5.0, 15.0, 25.0]
QUICK_EVAL_SAMPLES = 1000
# the layers of Figure 4 and the children of the network (names as in print(model)) they are
LAYER_CHILDREN: dict[str, dict[str, str]] = {"lenet": {"conv1": "0", "conv2": "2", "fc1": "5", "fc2": "7"}}
MODEL_NAMES = {"mlp": "MLP", "lenet": "LeNet"}
# finetune.py flags a reused run must share with the wanted one: the grid values and everything that changes
# the trained model or the test images it is evaluated on
CHECKED_ARGS = ["model", "method", "dataset", "seed", "epochs", "lmbda", "c", "d", "reg_layers", "eval_samples",
                "lr", "max_iter", "train_samples", "batch_size", "ref_epochs", "ref_lr"]
# finetune.py flags that define a point or its run directory: --extra must not change them
FIXED_ARGS = ["method", "c", "lmbda", "d", "reg_layers", "seed", "out"]
STUDIES = ("cl", "layers")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cs", type=float, nargs="+", default=None, metavar="C",
                   help="values of c; unset: 5 15 25 35 45, with --full 5 10 ... 45")
    p.add_argument("--d", type=float, default=5.0, help="d of every run")
    p.add_argument("--model", default="lenet", help=f"architecture: {', '.join(models.ARCHITECTURES)}")
    p.add_argument("--epochs", type=int, default=3,
                   help="fine-tuning epochs of every run (the quick and the full version alike; more epochs: "
                        "--epochs N)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help=f"final evaluation on the first N test images (0: all); unset: {QUICK_EVAL_SAMPLES}, with "
                        "--full 0; --extra --eval-samples wins over it")
    p.add_argument("--epoch-eval-samples", type=int, default=1000,
                   help="per-epoch evaluation on the first N test images (0: as --eval-samples); not plotted")
    p.add_argument("--full", action="store_true",
                   help="the full version: c = 5, 10, ..., 45 (unless --cs) and the final evaluation on all test "
                        "images (unless --eval-samples); epochs stay --epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the reference and of every run")
    p.add_argument("--data-dir", default=None, help="as in finetune.py")
    p.add_argument("--cache-dir", default="runs/references", help="reference cache, as in finetune.py")
    p.add_argument("--out", default="runs/studies",
                   help="folder for <study>/<run>/ directories and <study>.json / <study>.md")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further finetune.py flags for every run, e.g. --train-samples 2000 (put last; they come "
                        "after the study's own flags, so they win where both give one)")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="The paper's Figure 3 (c and λ) and Figure 4 (layer-wise "
                                            "regularization) studies: one Deep Defense fine-tuning run per point.",
                                add_help=add_help, formatter_class=utils.HelpFormatter,
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="study", required=True, metavar="STUDY", help="which study to run")
    cl = sub.add_parser("cl", help="Figure 3: one run per (lambda, c), d fixed",
                        description="Figure 3: Deep Defense fine-tuning with every combination of λ (--lmbdas) "
                                    "and c (--cs), d fixed (--d); one run each in <out>/cl/lmbda<λ>-c<c>/.",
                        add_help=add_help, formatter_class=utils.HelpFormatter,
                        allow_abbrev=False)  # so that --extra --c 10 is not taken for --cs/--cache-dir
    cl.add_argument("--lmbdas", type=float, nargs="+", default=LMBDAS, metavar="LAMBDA",
                    help="values of λ (the regularizer's weight)")
    _add_common(cl)
    layers = sub.add_parser("layers", help="Figure 4: one run per (layer, c), only that layer regularized",
                            description="Figure 4: Deep Defense fine-tuning where only one layer receives the "
                                        "regularizer's gradient (finetune.py --reg-layers), for every layer and c; "
                                        "one run each in <out>/layers/<layer>-c<c>/.",
                            add_help=add_help, formatter_class=utils.HelpFormatter,
                            allow_abbrev=False)
    layers.add_argument("--layers", nargs="+", default=None, metavar="NAME[=CHILD]",
                        help="layers to regularize, one at a time: NAME=CHILD (CHILD: the network's child as in "
                             "print(model), e.g. fc1=5) or, for lenet, just a NAME of "
                             f"{', '.join(f'{k}={v}' for k, v in LAYER_CHILDREN['lenet'].items())}; "
                             "unset: all of those (other models must give NAME=CHILD)")
    layers.add_argument("--lmbda", type=float, default=15.0, help="λ of every run")
    _add_common(layers)
    return p


# ------------------------------------------------------------------------------------------------------ the grid


def resolve_layers(model: str, specs: list[str] | None) -> dict[str, str]:
    """``{layer name: child name}`` from ``--layers`` (or the model's default map)."""
    known = LAYER_CHILDREN.get(model)
    if not specs:
        if known is None:
            raise SystemExit(f"error: no default layers for model {model!r} (known: {', '.join(LAYER_CHILDREN)}); "
                             f"give --layers NAME=CHILD ... with CHILD among {_children(model)}.")
        return dict(known)
    layers: dict[str, str] = {}
    for spec in specs:
        name, sep, child = spec.partition("=")
        if not sep:
            if known is None or name not in known:
                raise SystemExit(f"error: --layers {spec}: give NAME=CHILD (CHILD among {_children(model)})"
                                 + (f", or one of {', '.join(known)}" if known else "") + ".")
            child = known[name]
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or not child:
            raise SystemExit(f"error: --layers {spec}: NAME must be letters, digits, '_', '.', '+' or '-' (it names "
                             "the run directory) and CHILD must not be empty.")
        if name in layers:
            raise SystemExit(f"error: --layers names {name!r} twice.")
        layers[name] = child
    children = _children(model)
    bad = [f"{n}={c}" for n, c in layers.items() if c not in children]
    if bad:
        raise SystemExit(f"error: --layers {' '.join(bad)}: {model}'s children are {children}.")
    return layers


def _children(model: str) -> list[str]:
    return [name for name, _ in models.build(model).named_children()]


def _unique(values: list[float], flag: str) -> list[float]:
    if len(set(values)) != len(values):
        raise SystemExit(f"error: {flag} repeats a value: {' '.join(f'{v:g}' for v in values)}.")
    if any(not v >= 0 for v in values):
        raise SystemExit(f"error: {flag} values must not be negative: {' '.join(f'{v:g}' for v in values)}.")
    return values


def jobs_of(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One dict per run: its grid values, run directory and progress label."""
    out = Path(args.out) / args.study
    if args.study == "cl":
        return [{"lmbda": lmbda, "c": c, "d": args.d, "reg_layers": None, "run": out / f"lmbda{lmbda:g}-c{c:g}",
                 "label": f"lambda {lmbda:g}, c {c:g}"}
                for lmbda in args.lmbdas for c in args.cs]
    return [{"layer": name, "child": child, "lmbda": args.lmbda, "c": c, "d": args.d, "reg_layers": [child],
             "run": out / f"{name}-c{c:g}", "label": f"{name} (child {child}), c {c:g}"}
            for name, child in args.layer_map.items() for c in args.cs]


def run_argv(job: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """finetune.py's flags for one run: the study's first, then --extra (which wins where both give a flag)."""
    return [args.model, "--method", "deepdefense", "--lmbda", repr(job["lmbda"]), "--c", repr(job["c"]),
            "--d", repr(job["d"]), *(["--reg-layers", *job["reg_layers"]] if job["reg_layers"] else []),
            "--epochs", str(args.epochs), "--eval-samples", str(args.eval_samples),
            "--epoch-eval-samples", str(args.epoch_eval_samples), "--seed", str(args.seed),
            "--out", str(job["run"]), "--cache-dir", args.cache_dir, "--resume", "--no-progress",
            *(["--data-dir", args.data_dir] if args.data_dir else []), *args.extra]


def wanted_args(job: dict[str, Any], argv: list[str], seed: int) -> argparse.Namespace:
    """finetune.py's parsed flags of one run (defaults filled in); --extra may not move it off the grid."""
    parser = finetune.get_args_parser()
    parser.prog = "studies.py: finetune.py flags (--extra)"  # so that an error names where the bad flag came from
    wanted = parser.parse_args(argv)
    finetune.check_args(wanted, parser)
    intended = {"method": "deepdefense", "c": job["c"], "lmbda": job["lmbda"], "d": job["d"],
                "reg_layers": job["reg_layers"], "seed": seed, "out": str(job["run"])}
    moved = [k for k in FIXED_ARGS if getattr(wanted, k) != intended[k]]
    if moved:
        raise SystemExit(f"error: --extra changes {', '.join('--' + k.replace('_', '-') for k in moved)}, which "
                         "define a point of the study or its run directory; use the study's own flags (--cs, "
                         "--lmbdas/--lmbda, --d, --layers, --seed, --out).")
    return wanted


def check_stored(run_dir: Path, wanted: argparse.Namespace) -> None:
    """Refuse a run directory whose stored flags differ from the wanted ones on CHECKED_ARGS."""
    path = run_dir / "config.json"
    try:
        stored = utils.json.loads(path.read_text(encoding="utf-8"))["args"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"error: cannot read the flags of {run_dir} from {path} ({type(exc).__name__}: {exc}); "
                         "delete the run or choose another --out.") from None
    defaults = finetune.get_args_parser()
    diff = []
    for k in CHECKED_ARGS:
        have = stored.get(k, defaults.get_default(k))  # a flag newer than the run: the run had its default
        if have != getattr(wanted, k):
            diff.append(f"{k}: stored {have!r}, wanted {getattr(wanted, k)!r}")
    if diff:
        raise SystemExit(f"error: {run_dir} was run with other settings ({'; '.join(diff)}). Delete it or choose "
                         "another --out.")


# --------------------------------------------------------------------------------------------------------- output


def _num(v: Any) -> float:
    return float("nan") if v is None else float(v)


def summarize_reference(results: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The reference's accuracy and ρ₂ (every run's final evaluation of it; they should all agree)."""
    refs = [(job, result["reference"]) for job, result in results]
    first_job, first = refs[0]
    spread = {k: max(_num(r[k]) for _, r in refs) - min(_num(r[k]) for _, r in refs) for k in ("acc", "rho2")}
    consistent = all(v <= 1e-6 for v in spread.values()) and len({r.get("n") for _, r in refs}) == 1
    if not consistent:
        print(f"note: the runs' references disagree (spread: acc {spread['acc']:.4g}, rho2 {spread['rho2']:.4g}); "
              f"the summary shows the one of {first_job['run']}", flush=True)
    origin = None
    config = Path(first_job["run"]) / "config.json"
    if config.is_file():
        origin = utils.json.loads(config.read_text(encoding="utf-8")).get("reference")
    checkpoint = origin.split(": ", 1)[1] if isinstance(origin, str) and ": " in origin else None
    return {"acc": _num(first["acc"]), "rho2": _num(first["rho2"]), "n": first.get("n"),
            "fooling_rate": first.get("fooling_rate"), "from_run": str(first_job["run"]),
            "checkpoint": checkpoint, "origin": origin,
            "consistent": consistent, "spread": spread}


def point_of(job: dict[str, Any], result: dict[str, Any], reused: bool) -> dict[str, Any]:
    ft = result["finetuned"]
    grid = {"layer": job["layer"], "child": job["child"]} if "layer" in job else {}
    return {**grid, "lmbda": job["lmbda"], "c": job["c"], "d": job["d"], "acc": _num(ft["acc"]),
            "rho2": _num(ft["rho2"]), "fooling_rate": ft.get("fooling_rate"), "n": ft.get("n"),
            "wall_seconds": result.get("wall_seconds"), "run": str(job["run"]), "reused": reused}


def title_of(summary: dict[str, Any]) -> str:
    name = MODEL_NAMES.get(summary["model"], summary["model"])
    if summary["study"] == "cl":
        return f"Figure 3 study: {name}, d = {summary['grid']['d']:g}, varying c and λ"
    return (f"Figure 4 study: {name}, λ = {summary['grid']['lmbda']:g}, d = {summary['grid']['d']:g}, "
            "one layer regularized, varying c")


def markdown(summary: dict[str, Any]) -> str:
    ref = summary["reference"]
    first = ["layer", "c"] if summary["study"] == "layers" else ["λ", "c"]
    run_minutes = sum(p["wall_seconds"] or 0.0 for p in summary["points"]) / 60
    lines = [
        f"# {title_of(summary)}\n",
        f"- Deep Defense fine-tuning of the reference, {_plural(summary['epochs'], 'epoch')} per run; test "
        f"accuracy and DeepFool ρ₂ on {summary['n_test']} test images (the final evaluation of every run)",
        f"- data: {summary['data']}",
        f"- reference: {ref['checkpoint'] or ref['from_run']}"
        + ("" if ref["consistent"] else " (note: the runs' evaluations of the reference disagree; this row is the "
                                        f"first run's, spread {ref['spread']})"),
        f"- {len(summary['points'])} runs, {run_minutes:.1f} min in all (this call: "
        f"{summary['wall_seconds'] / 60:.1f} min)\n",
        "| " + " | ".join(first)
        + " | test acc. (%) | ρ₂ | ρ₂ / reference ρ₂ | fooling rate | wall time (s) | run |",
        "| " + " | ".join("---" for _ in first) + " | --- | --- | --- | --- | --- | --- |",
        "| reference | — | " + f"{100 * ref['acc']:.2f} | {ref['rho2']:.4f} | 1.000 | {_rate(ref)} | — | — |",
    ]
    for p in summary["points"]:
        key = f"{p['layer']} ({p['child']})" if summary["study"] == "layers" else f"{p['lmbda']:g}"
        ratio = p["rho2"] / ref["rho2"] if ref["rho2"] else float("nan")
        wall = "—" if p["wall_seconds"] is None else f"{p['wall_seconds']:.0f}"
        lines.append(f"| {key} | {p['c']:g} | {100 * p['acc']:.2f} | {p['rho2']:.4f} | {ratio:.3f} | {_rate(p)} | "
                     f"{wall} | {p['run']} |")
    return "\n".join(lines) + "\n"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _rate(m: dict[str, Any]) -> str:
    return "—" if m.get("fooling_rate") is None else f"{100 * m['fooling_rate']:.1f}%"


# ------------------------------------------------------------------------------------------------------------ main


def check_args(args: argparse.Namespace) -> None:
    if args.model not in models.ARCHITECTURES:
        raise SystemExit(f"error: unknown model {args.model!r}; choose one of: {', '.join(models.ARCHITECTURES)}.")
    if tuple(models.INPUT_SHAPES[args.model]) != (1, 28, 28):
        mnist_models = [a for a, shape in models.INPUT_SHAPES.items() if tuple(shape) == (1, 28, 28)]
        raise SystemExit("error: " + f"model {args.model!r} takes {tuple(models.INPUT_SHAPES[args.model])} inputs, but this script loads "
            f"MNIST/Fashion-MNIST (1, 28, 28) only; choose one of: {', '.join(mnist_models)}")
    if args.cs is None:
        args.cs = list(FULL_CS if args.full else QUICK_CS)
    if args.eval_samples is None:
        args.eval_samples = 0 if args.full else QUICK_EVAL_SAMPLES
    _unique(args.cs, "--cs")
    if args.study == "cl":
        _unique(args.lmbdas, "--lmbdas")
    elif not args.lmbda >= 0:
        raise SystemExit(f"error: --lmbda must not be negative, got {args.lmbda:g}.")
    if args.study == "layers":
        args.layer_map = resolve_layers(args.model, args.layers)
    if not args.d >= 0:
        raise SystemExit(f"error: --d must not be negative, got {args.d:g}.")
    if args.epochs < 1:
        raise SystemExit(f"error: --epochs must be at least 1, got {args.epochs}.")
    if args.eval_samples < 0 or args.epoch_eval_samples < 0:
        raise SystemExit("error: --eval-samples and --epoch-eval-samples must not be negative.")


def main(args: argparse.Namespace) -> dict[str, Any]:
    check_args(args)
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    jobs = jobs_of(args)
    # every run's flags are parsed and every stored run checked before anything is trained
    for job in jobs:
        job["argv"] = run_argv(job, args)
        job["wanted"] = wanted_args(job, job["argv"], args.seed)
        job["finished"] = (job["run"] / "metrics.json").is_file()
        if (job["run"] / "config.json").is_file():
            check_stored(job["run"], job["wanted"])
    start = time.perf_counter()
    new_walls: list[float] = []
    results: list[tuple[dict[str, Any], dict[str, Any]]] = []
    points = []
    for i, job in enumerate(jobs, 1):
        left = sum(not j["finished"] for j in jobs[i - 1:])
        eta = f", about {left * statistics.mean(new_walls) / 60:.1f} min left" if new_walls and left else ""
        print(f"[{i}/{len(jobs)}] {job['label']} (elapsed {(time.perf_counter() - start) / 60:.1f} min{eta})",
              flush=True)
        if job["finished"]:
            result = utils.json.loads((job["run"] / "metrics.json").read_text(encoding="utf-8"))
        else:
            t0 = time.perf_counter()
            result = finetune.main(finetune.get_args_parser().parse_args(job["argv"]))
            new_walls.append(time.perf_counter() - t0)
        ft = result["finetuned"]
        print(f"  {'reused' if job['finished'] else 'finished'} {job['run']}: acc {ft['acc']:.4f}, "
              f"rho2 {ft['rho2']:.4f}", flush=True)
        results.append((job, result))
        points.append(point_of(job, result, job["finished"]))

    wanted = jobs[0]["wanted"]
    ns = sorted({p["n"] for p in points if p["n"] is not None})
    if args.study == "cl":
        grid: dict[str, Any] = {"lmbda": list(args.lmbdas), "c": list(args.cs), "d": args.d}
    else:
        grid = {"layers": list(args.layer_map), "children": dict(args.layer_map), "c": list(args.cs),
                "lmbda": args.lmbda, "d": args.d}
    common = {k: v for k, v in vars(wanted).items() if k not in ("c", "lmbda", "reg_layers", "out")}
    summary = {
        "study": args.study, "figure": "figure3" if args.study == "cl" else "figure4", "model": args.model,
        "grid": grid, "epochs": wanted.epochs, "eval_samples": wanted.eval_samples,
        "n_test": ns[0] if len(ns) == 1 else ns, "data": results[0][1].get("data"),
        "points": points, "reference": summarize_reference(results),
        "finetune_args": common, "config": {k: v for k, v in vars(args).items() if k != "layer_map"},
        "environment": utils.environment(), "wall_seconds": time.perf_counter() - start,
    }
    out = Path(args.out)
    text = markdown(summary)
    utils.write_json(out / f"{args.study}.json", summary)
    utils.write_text_atomic(out / f"{args.study}.md", text)
    print("\n" + text + f"\nwrote {out / (args.study + '.json')} and {out / (args.study + '.md')}", flush=True)
    return summary


if __name__ == "__main__":
    main(get_args_parser().parse_args())

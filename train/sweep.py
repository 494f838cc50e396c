"""Choose a fine-tuning hyper-parameter (learning rate, FGS ε, Parseval β, ...) on a validation split.

Examples::

    python train/sweep.py mlp --data-dir ../shared/data --lrs 5e-3 1e-2 2e-2 --epochs 20 --out runs/sweep-mlp
    python train/sweep.py lenet --method advtrain-fgs --param fgs-eps --values 0.05 0.1 0.2 --epochs 10 \
        --data-dir ../shared/data --out runs/sweep-lenet-advtrain-fgs

    python train/sweep.py lenet --grid c=5,15,25 lmbda=15,25 --epochs 10 --data-dir ../shared/data \
        --out runs/sweep-lenet-deepdefense

Each value (or, with ``--grid``, each combination of values) is one ``finetune.py`` run (``--PARAM VALUE``, the
value passed as typed, so integer flags such as ``batch-size``, ``seed`` or ``epochs`` can be swept too; a swept
flag that ``--extra`` also sets takes ``--extra``'s value, with a warning) with ``--val-size`` images held out of the
training set and evaluated (accuracy, DeepFool ρ₂) after every epoch; the test set is not used for the choice. The chosen
setting is the value with the highest validation ρ₂ whose validation accuracy is not below the
reference's, among each run's *last* epoch (the last one it actually ran: ``--extra --epochs N`` or an ``epochs`` axis
override ``--epochs``): only the last epoch follows exactly the recipe that a run of that
many epochs uses (the learning rate is halved in the last epoch); the other epochs are listed for information.
Finished runs are reused. Writes ``sweep.json`` and ``sweep.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any


from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import utils  # noqa: E402


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Validation sweep over fine-tuning learning rates and epochs.",
                                add_help=add_help, allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="mlp or lenet")
    p.add_argument("--method", default="deepdefense", help="fine-tuning method (see finetune.py --help)")
    p.add_argument("--param", default="lr",
                   help="the finetune.py flag to sweep, without its dashes (lr, fgs-eps, parseval-beta, alpha, ...)")
    p.add_argument("--values", nargs="+", default=None, help="values of --param to try")
    p.add_argument("--grid", nargs="+", default=None, metavar="PARAM=V1,V2,...",
                   help="sweep every combination of several flags instead of one --param (e.g. c=5,15,25 lmbda=15,25)")
    p.add_argument("--lrs", nargs="+", default=None, help="shorthand for --param lr --values ...")
    p.add_argument("--epochs", type=int, required=True,
                   help="epochs of each run (each run's last epoch is the candidate; the others are listed)")
    p.add_argument("--val-size", type=int, default=500, help="training images held out for validation")
    p.add_argument("--data-dir", default=None, help="as in finetune.py")
    p.add_argument("--seed", type=int, default=0, help="seed of every run")
    p.add_argument("--out", required=True, help="sweep directory (one run directory per learning rate inside)")
    p.add_argument("--cache-dir", default="runs/references", help="reference cache, as in finetune.py")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                   help="further finetune.py flags, passed through (put last)")
    return p


def main(args: argparse.Namespace) -> dict[str, Any]:
    print("configuration:\n" + "\n".join(f"  {k}: {v}" for k, v in sorted(vars(args).items())), flush=True)
    settings = grid_settings(args)
    names = list(settings[0])
    overridden = [n for n in names if any(x == f"--{n}" or x.startswith(f"--{n}=") for x in args.extra)]
    if overridden:
        print(f"warning: --extra also sets {', '.join('--' + n for n in overridden)}, which overrides the swept "
              "value in every run.", flush=True)
    out = Path(args.out)
    candidates, finals, runs, failed = [], [], [], []
    for setting in settings:
        label = "-".join(f"{name}{show(value)}" for name, (value, _) in setting.items())
        run_dir = out / label
        values = {name: value for name, (value, _) in setting.items()}
        value = values[names[0]] if len(names) == 1 else label
        if (run_dir / "metrics.json").is_file():
            result = utils.json.loads((run_dir / "metrics.json").read_text())
            print(f"reusing {run_dir}", flush=True)
        elif (run_dir / "failed.json").is_file():
            failed.append(failed_row(run_dir, value, values))
            print(f"reusing {run_dir} (it failed: {failed[-1]['failed']})", flush=True)
            continue
        else:
            # the swept flags after this script's own (--epochs, --seed, ...): the later flag wins in argparse
            flags = [x for name, (_, text) in setting.items() for x in (f"--{name}", text)]
            argv = [args.model, "--method", args.method, "--epochs", str(args.epochs),
                    "--val-size", str(args.val_size), "--seed", str(args.seed), "--out", str(run_dir),
                    "--cache-dir", args.cache_dir, "--eval-samples", "500", "--epoch-eval-samples", "100",
                    "--resume", "--no-progress", *(["--data-dir", args.data_dir] if args.data_dir else []), *flags,
                    *args.extra]
            try:
                result = finetune.main(finetune.get_args_parser().parse_args(argv))
            except SystemExit:  # a diverged run (finetune_report.fail_run) is one row; the sweep goes on
                if not (run_dir / "failed.json").is_file():
                    raise  # a bad flag or missing data: every run would fail the same way
                failed.append(failed_row(run_dir, value, values))
                print(f"{run_dir} failed: {failed[-1]['failed']}; going on with the next setting", flush=True)
                continue
        ref_val = result["reference_val"]
        runs.append({"setting": values, "reference_val": ref_val})
        for row in result["history"]:
            candidates.append({"value": value, **values, "epoch": row["epoch"], "val_acc": row["val"]["acc"],
                               "val_rho2": row["val"]["rho2"], "ref_val_acc": ref_val["acc"],
                               "ref_val_rho2": ref_val["rho2"]})
        if result["history"]:  # the run's last epoch, however many it ran (--extra --epochs, an epochs axis)
            finals.append(candidates[-1])
    if not finals:
        raise SystemExit(f"error: every run of the sweep failed ({'; '.join(f['failed'] for f in failed)}); "
                         f"see {out}/*/summary.md, and lower --lr or the method's strength")
    eligible = [c for c in finals if c["val_acc"] >= c["ref_val_acc"]]
    best = max(eligible or finals, key=lambda c: c["val_rho2"])
    table = utils.format_table(
        [{**c, "ratio": c["val_rho2"] / c["ref_val_rho2"], "chosen": "◀" if c is best else ""} for c in candidates]
        + [{**f, "epoch": f"failed: {f['failed']}"} for f in failed],
        [*((name, name) for name in names), ("epoch", "epoch"), ("val_acc", "val acc."), ("val_rho2", "val ρ₂"),
         ("ratio", "ρ₂ ×"), ("chosen", "chosen")],
    )
    ref = runs[0]["reference_val"]
    param = ", ".join(names)
    chosen = ", ".join(f"{name} {show(best[name])}" for name in names)
    text = (f"# Validation sweep: {args.model}, {args.method}, {param}\n\n{args.val_size} validation images held out of the "
            f"training set (seed {args.seed}); reference: val acc. {ref['acc']:.4f}, val ρ₂ {ref['rho2']:.4f}.\n"
            f"Chosen: {chosen}, {best['epoch']} epochs (highest val ρ₂ at the last epoch with val acc. ≥ the "
            f"reference's"
            f"{'' if eligible else '; none qualified, so highest val ρ₂ overall'}).\n\n{table}\n")
    utils.write_text_atomic(out / "sweep.md", text)
    utils.write_json(out / "sweep.json", {"candidates": candidates, "best": best, "failed": failed,
                                          "config": vars(args)})
    print(text)
    return {"best": best, "candidates": candidates, "failed": failed}


def failed_row(run_dir: Path, value: Any, values: dict[str, Any]) -> dict[str, Any]:
    """A diverged run as a table row: its setting and the reason from its ``failed.json``
    (finetune_report.fail_run); it is never a candidate."""
    reason = utils.json.loads((run_dir / "failed.json").read_text())["failed"]
    return {"value": value, **values, "failed": str(reason)}


def show(value: Any) -> str:
    """A swept value in run directory names and in "Chosen": floats as ``:g`` (1e-3 → 0.001), the rest as is."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def flag_value(name: str, text: str, item: str) -> tuple[Any, str]:
    """``(value, text)`` of one value of the ``finetune.py`` flag ``--name``: the value converted by that flag's own
    argparse type (int for ``--batch-size``, ``--seed``, ``--epochs``, ...) for the tables and JSON, and the text as
    typed, which is what ``finetune.py`` receives."""
    actions = {s: a for a in finetune.get_args_parser()._actions for s in a.option_strings}
    action = actions.get(f"--{name}")
    if action is None or action.nargs == 0:
        raise SystemExit(f"error: {item!r}: finetune.py has no flag --{name} that takes a value.")
    try:
        return (action.type(text) if callable(action.type) else text), text
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise SystemExit(f"error: {item!r}: {text!r} is not a valid --{name} value ({exc}); "
                         "expected PARAM=V1,V2,...") from None


def grid_settings(args: argparse.Namespace) -> list[dict[str, tuple[Any, str]]]:
    """The runs to make, each as ``{flag name: (value, text as typed)}``, from ``--grid``, ``--param/--values`` or
    ``--lrs``; see ``flag_value``."""
    given = [args.grid is not None, args.values is not None, args.lrs is not None]
    if sum(given) != 1 or (args.lrs is not None and args.param != "lr"):
        raise SystemExit("error: give exactly one of --grid, --values (with --param) or --lrs (shorthand for "
                         "--param lr --values).")
    if args.grid is None:
        values = args.values if args.values is not None else args.lrs
        if not values:
            raise SystemExit("error: give the values to try with --values (or learning rates with --lrs).")
        name = args.param.lstrip("-")
        return [{name: flag_value(name, text, f"--{name} {text}")} for text in values]
    axes, items = {}, {}
    for item in args.grid:
        name, _, values = item.partition("=")
        name = name.lstrip("-")
        if not name or not values:
            raise SystemExit(f"error: --grid {item!r}: expected PARAM=V1,V2,...")
        if name in axes:  # the later one would silently replace the earlier one
            both = f"{items[name].partition('=')[2]},{values}"
            raise SystemExit(f"error: --grid names {name!r} twice ({items[name]!r}, {item!r}); give its values once, "
                             f"comma-separated: {name}={both}")
        items[name] = item
        axes[name] = [flag_value(name, text, f"--grid {item}") for text in values.split(",")]
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


if __name__ == "__main__":
    main(get_args_parser().parse_args())

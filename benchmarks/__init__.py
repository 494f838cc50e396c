"""Benchmarks of revnet's explicit reverse against autograd (scripts, not part of the library).

* ``benchmarks/step.py``: one Deep Defense training step, five ways (``benchmarks/variants.py``).
* ``benchmarks/deepfool.py``: evaluation-mode DeepFool throughput and its scaling with the number of classes.

Results (JSON, Markdown, PNG) go to ``--output``, by default the scratch folder ``runs/benchmarks/`` (ignored by
git), so a try never replaces the committed tables; ``--output benchmarks/results`` updates those. pytest never
collects these files.
"""

from revnet_app.train import cli

SCRATCH = "runs/benchmarks"
"""Where every benchmark writes unless ``--output`` says otherwise (relative to the current folder)."""


def add_reference_flags(parser, reference_help: str) -> None:
    """The flags of the scripts that time trained MNIST references (step.py, deepfool.py, amp.py): --reference
    (repeatable), --cache-dir, --ref-epochs, --ref-lr."""
    parser.add_argument("--reference", action="append", default=[], metavar="PATH", help=reference_help)
    parser.add_argument("--cache-dir", default="runs/references", help="where trained reference models are cached")
    parser.add_argument("--ref-epochs", type=int, default=10, help="epochs of a reference trained here")
    parser.add_argument("--ref-lr", type=float, default=0.01, help="learning rate of a reference trained here")


def add_device_flag(parser) -> None:
    """--device of the benchmark scripts (``train/cli.py``'s flag)."""
    cli.add_device_flag(parser, help="cpu or cuda; unset: cuda if available")

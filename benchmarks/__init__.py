"""Benchmarks of revnet's explicit reverse against autograd (scripts, not part of the library).

* ``benchmarks/step.py``: one Deep Defense training step, five ways (``benchmarks/variants.py``).
* ``benchmarks/deepfool.py``: evaluation-mode DeepFool throughput and its scaling with the number of classes.

Results (JSON, Markdown, PNG) go to ``--output``, by default the scratch folder ``runs/benchmarks/`` (ignored by
git), so a try never replaces the committed tables; ``--output benchmarks/results`` updates those. pytest never
collects these files.
"""

SCRATCH = "runs/benchmarks"
"""Where every benchmark writes unless ``--output`` says otherwise (relative to the current folder)."""

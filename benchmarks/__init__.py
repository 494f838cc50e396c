"""Benchmarks of revnet's explicit reverse against autograd (scripts, not part of the library).

* ``benchmarks/step.py``: one Deep Defense training step, five ways (``benchmarks/variants.py``).
* ``benchmarks/deepfool.py``: evaluation-mode DeepFool throughput and its scaling with the number of classes.

Results go to ``benchmarks/results/`` (JSON, Markdown, PNG). pytest never collects these files.
"""

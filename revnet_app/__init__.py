"""revnet's experiment code, importable from any folder after ``pip install -e .``.

The repository keeps its folders; ``setup.py`` maps them into this one namespaced package, so the installed
distribution claims no generic top-level name (a user's own ``models.py`` or ``train.py`` stays theirs):

* ``revnet_app.train``: ``train/`` (fine-tuning, evaluation, data, the paper's table and figures);
* ``revnet_app.models``: ``models/`` (the paper's networks, checkpoints);
* ``revnet_app.benchmarks``: ``benchmarks/`` (timing and coverage scripts).

The scripts still run as files: ``python train/finetune.py lenet``.
"""

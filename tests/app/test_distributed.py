"""Multi-process fine-tuning with ``torchrun`` and ``DistributedDataParallel`` (gloo, on the CPU).

Time budget: about 45 s here (one in-process single-process run that also trains the shared reference, four
two-process ``torchrun`` launches of a tiny MLP fine-tuning at a few seconds each, and fast unit tests).

* Two processes against one, with the same global batch and sample order, one thread each: the fine-tuned weights
  agree to float32 round-off (max |Δw| ≤ 1e-6; measured 2e-8, the weights are ~0.1), and both ranks end with
  bit-identical weights (``finetune.py`` checks their fingerprints; ``metrics.json`` records it). DDP sums the
  ranks' gradients in another order, so the metrics agree within ``tolerances.FLOAT32_ROUNDOFF`` (counts
  exactly, a fraction of images to one image, ρ₂ to 1e-5 relative), not bit for bit (``tests/tolerances.py``).
* SIGKILL of the whole two-process run after its first (mid-epoch) checkpoint, then ``--resume``: the final
  weights equal the uninterrupted two-process run's bit for bit.
* A NaN loss on rank 1 only stops both ranks at the same step with one message from our code, no hang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.train import methods  # noqa: E402
from revnet_app.train import distributed  # noqa: E402
import tolerances  # noqa: E402
from revnet_app.train import finetune  # noqa: E402
from revnet_app.train import loaders  # noqa: E402
from revnet_app import models  # noqa: E402
import revnet  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# 400 MNIST images, global batch 50: 8 steps, a mid-epoch checkpoint every 3
RUN = ["mlp", "--threads", "1", "--train-samples", "400", "--batch-size", "50", "--epochs", "1", "--ref-epochs", "15", "--ref-lr", "0.05",
       "--lr", "0.01", "--eval-samples", "100", "--epoch-eval-samples", "100", "--eval-max-iter", "10", "--eval-batch-size", "30",
       "--checkpoint-every", "3", "--no-progress", "--device", "cpu", "--min-acc-ratio", "0"]


def _data_flags() -> list[str]:
    return ["--data-dir", str(DATA)] if (DATA / "MNIST").is_dir() else ["--no-download"]


def _torchrun(tmp: Path, out: str, *extra: str, env: dict | None = None, nproc: int = 2,
              kill_after: int | None = None):
    """``train/finetune.py`` under torchrun; ``kill_after=K``: each process kills itself after the checkpoint of
    its K-th step (``tests/finetune_killed.py``)."""
    script = [str(ROOT / "train" / "finetune.py")] if kill_after is None else [
        str(ROOT / "tests" / "finetune_killed.py"), str(kill_after)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *script, *RUN, *_data_flags(), "--cache-dir", str(tmp / "refs"), "--out", str(tmp / out), *extra]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full_env, cwd=tmp)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "final.pt", weights_only=True)["state_dict"]


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process run (in this process; it trains and caches the reference the others reuse) and the
    uninterrupted two-process run."""
    tmp = tmp_path_factory.mktemp("ddp")
    args = finetune.get_args_parser().parse_args(
        RUN + _data_flags() + ["--cache-dir", str(tmp / "refs"), "--out", str(tmp / "single")])
    threads = torch.get_num_threads()
    try:
        finetune.main(args)  # --threads 1, as each torchrun process
    finally:
        torch.set_num_threads(threads)
    two = _torchrun(tmp, "two")
    assert two.returncode == 0, two.stderr[-3000:]
    return tmp


@given(n=st.integers(1, 60), batch=st.integers(1, 17), world=st.integers(1, 5), start=st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_rank_shares_make_up_the_single_process_batches(n, batch, world, start):
    single = loaders.EpochBatches(n, batch, seed=3, epoch=2)
    start = min(start, len(single))
    shares = [loaders.EpochBatches(n, batch, 3, 2, start, rank=r, world_size=world) for r in range(world)]
    for s, whole in enumerate(single.batches[start:]):
        parts = [share.batches[start + s] for share in shares]
        assert sorted(i for part in parts for i in part) == sorted(whole)  # every image once, no padding
        assert shares[0].global_sizes[start + s] == len(whole)
    for share in shares:  # Parseval's rows: the same generator on every rank as in the single process
        assert torch.equal(share.generator.get_state(), single.generator.get_state())


@pytest.mark.parametrize("n", [401, 403])
def test_a_last_batch_smaller_than_the_world_still_trains_on_every_rank(tmp_path, n):
    """401 or 403 images in global batches of 100 on two processes: the last batch holds 1 or 3 images, so one
    rank's share is empty (401) or uneven (403); that rank still steps and joins every collective. 401 reuses the
    single process's cached reference, 403 trains its own under DDP (the reference's last batch too). The weights
    equal the single process's to float32 round-off, as in ``test_two_processes_equal_one``."""
    flags = ["mlp", "--threads", "1", "--train-samples", str(n), "--batch-size", "100", "--epochs", "1",
             "--ref-epochs", "15", "--ref-lr", "0.05", "--lr", "0.01", "--eval-samples", "20", "--epoch-eval-samples",
             "20", "--eval-max-iter", "5", "--no-progress", "--device", "cpu", "--min-acc-ratio", "0", *_data_flags()]
    threads = torch.get_num_threads()
    try:
        finetune.main(finetune.get_args_parser().parse_args(
            flags + ["--cache-dir", str(tmp_path / "refs"), "--out", str(tmp_path / "single")]))
    finally:
        torch.set_num_threads(threads)
    cache = tmp_path / ("refs" if n == 401 else "refs-ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train" / "finetune.py"), *flags, "--cache-dir", str(cache), "--out", str(tmp_path / "two")]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    w1, w2 = _weights(tmp_path / "single"), _weights(tmp_path / "two")
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() <= 1e-6, key
    assert _metrics(tmp_path / "two")["processes"]["world_size"] == 2


def test_evaluation_shards_hold_every_image_once():
    worlds = [distributed.World(rank=r, size=3) for r in range(3)]
    parts = [distributed.shard(range(10), w) for w in worlds]
    assert sorted(sum(parts, [])) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]


def test_two_processes_equal_one(runs):
    single, two = runs / "single", runs / "two"
    w1, w2 = _weights(single), _weights(two)
    for key in w1:
        assert (w1[key] - w2[key]).abs().max() <= 1e-6, key
    m1, m2 = _metrics(single), _metrics(two)
    assert m2["processes"]["world_size"] == 2 and m2["processes"]["backend"] == "gloo"
    assert m1["processes"]["world_size"] == 1
    keys = ("n", "acc", "fooling_rate", "mean_iterations", "rho2", "fgs_acc@0.2", "fgs_acc@0.5", "fgs_acc@1.0")
    for row in ("reference", "finetuned"):
        tolerances.assert_metrics_close({k: m2[row][k] for k in keys}, {k: m1[row][k] for k in keys},
                                        tolerances.FLOAT32_ROUNDOFF, row)
    history = ("train_acc", "train_loss")
    tolerances.assert_metrics_close({"eps_ref": m2["eps_ref"], **{k: m2["history"][0][k] for k in history}},
                                    {"eps_ref": m1["eps_ref"], **{k: m1["history"][0][k] for k in history}},
                                    tolerances.FLOAT32_ROUNDOFF)
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2


def test_sigkill_then_resume_equals_the_uninterrupted_run(runs):
    killed = _torchrun(runs, "killed", kill_after=3)
    assert killed.returncode != 0
    state = torch.load(runs / "killed" / "resume" / "checkpoint.pt", weights_only=True)
    assert state["mid_epoch"]["step"] == 3 and state["world_size"] == 2 and len(state["rng"]["ranks"]) == 2
    assert not (runs / "killed" / "final.pt").exists()
    with pytest.raises(SystemExit, match=r"with 1 process\(es\), but it was saved by 2"):
        finetune.main(finetune.get_args_parser().parse_args(
            RUN + _data_flags() + ["--cache-dir", str(runs / "refs"), "--out", str(runs / "killed"), "--resume"]))
    resumed = _torchrun(runs, "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "step 3 of epoch 1" in resumed.stdout
    w_resumed, w_whole = _weights(runs / "killed"), _weights(runs / "two")
    assert all(torch.equal(w_resumed[k], w_whole[k]) for k in w_whole)
    m_resumed, m_whole = _metrics(runs / "killed"), _metrics(runs / "two")
    assert m_resumed["finetuned"] == {**m_whole["finetuned"], "eval_seconds": m_resumed["finetuned"]["eval_seconds"]}


def test_a_nan_on_one_rank_stops_every_rank_with_one_message(runs):
    failed = _torchrun(runs, "nan", env={"REVNET_TEST_NAN_ON_RANK": "1"})
    assert failed.returncode != 0
    ours = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, failed.stderr[-3000:]
    assert "the training loss is NaN or infinite on rank 1" in ours[0]
    assert json.loads((runs / "nan" / "failed.json").read_text())["failed"].startswith("the training loss is NaN")
    assert not (runs / "nan" / "metrics.json").exists()


def test_evaluate_under_torchrun_equals_one_process(runs):
    from revnet_app.train import evaluate

    ckpt = runs / "single" / "final.pt"
    flags = [str(ckpt), *_data_flags(), "--eval-samples", "100", "--eval-max-iter", "10", "--no-progress",
             "--device", "cpu", "--eval-batch-size", "30"]
    one = evaluate.main(evaluate.get_args_parser().parse_args(flags + ["--output", str(runs / "eval1.json")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train" / "evaluate.py"), *flags, "--output", str(runs / "eval2.json")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=runs,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("written:") == 1  # rank 0 alone prints and writes
    two = json.loads((runs / "eval2.json").read_text())
    assert two["processes"] == 2 and two["n"] == one["n"] == 100
    keys = ("acc", "fooling_rate", "mean_iterations", "own_eps_ref", "fgs_acc@1.0", "rho2")  # other batch splits
    tolerances.assert_metrics_close({k: two[k] for k in keys}, {k: one[k] for k in keys}, tolerances.FLOAT32_ROUNDOFF)


def test_amp_trains_in_bf16_with_the_deepfool_step_in_float32():
    from revnet_app.train import engine

    torch.manual_seed(0)
    net = models.build("mlp")
    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    losses = {}
    for amp in (False, True):
        model = models.build("mlp")
        model.load_state_dict(net.state_dict())
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        gen = torch.Generator().manual_seed(0)
        stats = engine.train_one_epoch(model, methods.build("deepdefense"), opt, engine.tensor_batches(x, y, 20, gen),
                                       generator=gen, progress=engine.EpochProgress(bar=False), amp=amp)
        losses[amp] = stats["train_loss"]
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert losses[True] == pytest.approx(losses[False], rel=0.05)  # bf16 matmuls: a few % (benchmarks/amp.md)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        delta, _ = revnet.deepfool(net.eval(), x[:5], max_iter=3)
    assert delta.dtype == torch.float32

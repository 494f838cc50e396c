"""benchmarks/: the Deep Defense step variants (five, plus revnet on a revnet.Graph) compute revnet's step
(float64), the evaluation DeepFool engines compute revnet's attack, and the two benchmark scripts run end to
end at tiny sizes.

No test asserts on speed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import revnet

from autograd_reference import NETS, mixed_batch

ROOT = Path(__file__).resolve().parents[2]

from revnet_app.benchmarks import deepfool as deepfool_script  # noqa: E402
from revnet_app.benchmarks import step as step_script  # noqa: E402
from revnet_app.benchmarks import variants as V  # noqa: E402
from revnet_app.benchmarks import step_problems, step_report, step_targets  # noqa: E402
from revnet_app.benchmarks import variant_equivalence as E  # noqa: E402

from revnet_app.train import normalization  # noqa: E402
from revnet_app.train.sources import mnist as mnist_source  # noqa: E402
from revnet_app import models  # noqa: E402

F64 = torch.float64
MAX_ITER = 5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second thread only adds contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_batch = mixed_batch


@pytest.mark.parametrize("kind", list(NETS))
def test_the_batches_exercise_every_branch(kind):
    net, x, y = _batch(kind)
    out = V.VARIANTS["revnet"].loss(net, x, y, V.StepConfig(max_iter=MAX_ITER))
    assert out.correct.any() and (~out.correct).any(), "need correctly and wrongly classified samples"
    assert (out.success & (out.iterations < MAX_ITER)).any(), "need samples that stop early"
    assert len(set(out.iterations.tolist())) >= 3, f"need samples stopping at different iterations: {out}"
    assert (out.success & ~out.correct).any(), "need a misclassified sample moved to its label"


@pytest.mark.parametrize("early_stop", [True, False], ids=["early-stop", "no-early-stop"])
@pytest.mark.parametrize("kind", list(NETS))
def test_every_variant_computes_revnets_loss_and_gradients(kind, early_stop):
    net, x, y = _batch(kind)
    cfg = V.StepConfig(max_iter=MAX_ITER, early_stop=early_stop)
    report = E.check_equivalence(net, x, y, cfg)  # raises EquivalenceError on any mismatch
    assert set(V.VARIANTS) <= set(report)
    for key, row in report.items():
        assert row["loss_error"] <= 1 and row["grad_error"] <= 1, (key, row)
    expected_iters = MAX_ITER if not early_stop else None
    if expected_iters:
        assert report["autograd-loop"]["mean_iterations"] == MAX_ITER
        assert report["revnet"]["mean_iterations"] == MAX_ITER


@pytest.mark.parametrize("key", [k for k in V.VARIANTS if k != "revnet"])
def test_variant_gradients_are_not_trivially_equal(key):
    """Each variant really differentiates through DeepFool: its gradients differ from the cross-entropy's."""
    net, x, y = _batch("lenet")
    variant = V.VARIANTS[key]
    _, grads = E.loss_and_gradients(variant, variant.prepare(net), x, y, V.StepConfig(max_iter=MAX_ITER))
    ce_net = variant.prepare(net)
    ce = torch.nn.functional.cross_entropy(ce_net(x), y)
    ce_grads = torch.autograd.grad(ce, list(ce_net.parameters()))
    assert all(g.abs().sum() > 0 for g in grads.values())
    assert not all(torch.allclose(g, c) for g, c in zip(grads.values(), ce_grads))


def test_graph_variant_runs_revnets_loss_on_a_graph_of_the_chain():
    """Variant 1g: revnet.Graph(plain nn.Sequential copy), the same step as variant 1 in float64; to_torch of a
    Graph gives a plain torch.fx.GraphModule with the same parameters and outputs."""
    net, x, y = _batch("lenet")
    graph = V.VARIANTS["revnet-graph"].prepare(net)
    assert isinstance(graph, revnet.Graph) and not any(p is q for p, q in zip(graph.parameters(), net.parameters()))
    report = E.check_equivalence(net, x, y, V.StepConfig(max_iter=MAX_ITER), keys=["revnet-graph"])
    assert report["revnet-graph"]["loss_error"] <= 1 and report["revnet-graph"]["grad_error"] <= 1
    plain = V.to_torch(graph)
    assert isinstance(plain, torch.fx.GraphModule) and not plain.training
    assert not any(type(m).__module__.startswith("revnet") for m in plain.modules())
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert torch.equal(plain(x), net(x))


def test_to_torch_and_to_revnet_of_a_residual_model():
    """A plain torchvision ResNet-18 (residual adds, in-place ReLU): to_revnet converts a copy to a Graph,
    to_torch of that Graph runs the plain torch code again, all with the model's parameter names."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    graph = V.to_revnet(model)
    plain = V.to_torch(graph)
    assert isinstance(graph, revnet.Graph) and isinstance(plain, torch.fx.GraphModule)
    assert list(plain.state_dict()) == list(model.state_dict()) == list(graph.state_dict())
    with torch.no_grad():
        expected = model(x)
        assert torch.allclose(graph(x), expected, atol=1e-6) and torch.allclose(plain(x), expected, atol=1e-6)


def test_the_checker_rejects_a_different_computation():
    net, x, y = _batch("mlp")

    class Off(V.AutogradShortcutVariant):
        key = "off"

        def loss(self, net, x, y, cfg):  # a 1e-7 relative change of the overshoot
            return super().loss(net, x, y, dataclasses.replace(cfg, overshoot=cfg.overshoot * (1 + 1e-7)))

    V.VARIANTS["off"] = Off()
    try:
        with pytest.raises(E.EquivalenceError, match="off does not compute revnet's step"):
            E.check_equivalence(net, x, y, V.StepConfig(max_iter=MAX_ITER), keys=["off"])
    finally:
        del V.VARIANTS["off"]


def test_class_chunks_give_the_same_step():
    net, x, y = _batch("lenet")
    whole, whole_grads = E.loss_and_gradients(V.VARIANTS["revnet"], net, x, y, V.StepConfig(max_iter=MAX_ITER))
    chunked, chunked_grads = E.loss_and_gradients(
        V.VARIANTS["revnet"], net, x, y, V.StepConfig(max_iter=MAX_ITER, class_chunk=2))
    assert torch.equal(whole.iterations, chunked.iterations)
    assert E._scaled_error(chunked.loss, whole.loss) <= 1
    assert all(E._scaled_error(chunked_grads[k], whole_grads[k]) <= 1 for k in whole_grads)


def test_one_step_of_every_variant_gives_the_same_weights():
    net, x, y = _batch("mlp")
    after = {}
    for key, variant in V.VARIANTS.items():
        vnet = variant.prepare(net)
        opt = torch.optim.SGD(vnet.parameters(), lr=0.1, momentum=0.9)
        loss = variant.step(vnet, opt, x, y, V.StepConfig(max_iter=MAX_ITER))
        assert loss.dim() == 0 and not loss.requires_grad
        after[key] = [p.detach().clone() for p in vnet.parameters()]
    before = list(net.parameters())
    for key, weights in after.items():
        assert not torch.equal(weights[0], before[0].detach()), f"{key} did not update the weights"
        for w, ref in zip(weights, after["revnet"]):
            assert E._scaled_error(w, ref) <= 1, key


@pytest.mark.parametrize("candidates", [None, 3])
@pytest.mark.parametrize("kind", list(NETS))
def test_evaluation_engines_compute_revnets_deepfool(kind, candidates):
    net, x, _ = _batch(kind)
    errors = deepfool_script.check_engines(net, x, ["revnet", "loop", "batched", "func"], 20, 0.02, candidates)
    assert set(errors) == {"loop", "batched", "func"} and all(e <= 1 for e in errors.values())


def test_target_ratios_and_sentence():
    results = [{"model": "lenet", "batch_size": 100, "variant": k, "median_s": t, "peak_mib": m}
               for k, t, m in [("revnet", 0.2, 50.0), ("autograd-loop", 0.5, 100.0), ("autograd-batched", 0.8, 80.0),
                               ("torch-func", 2.0, 300.0), ("autograd-shortcut", 0.25, 70.0)]]
    ratios = step_targets.ratios_for(results, "lenet", 100)
    assert ratios["fastest_autograd"] == "autograd-loop"
    assert ratios["time_vs_fastest_autograd"] == pytest.approx(0.4)
    assert ratios["memory_vs_fastest_autograd"] == pytest.approx(0.5)
    assert ratios["time_vs_shortcut"] == pytest.approx(0.8)
    target = step_targets.evaluate_target([ratios], V.StepConfig(max_iter=5))
    assert target["in_run"] and target["time_vs_fastest_autograd_met"] and target["time_vs_shortcut_met"]
    assert "0.40× (target ≤ 0.5×: met)" in step_report.target_sentence(target)
    other = step_targets.evaluate_target([ratios], V.StepConfig(max_iter=2))
    assert not other["in_run"] and "--max-iter is 2" in step_report.target_sentence(other)


# ---------------------------------------------------------------------------------------------------------
# The scripts, end to end at tiny sizes (random-weight checkpoints: no reference training).


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    pre = normalization.preprocess_params(mnist_source.embedded_mnist().train_x)
    paths = {}
    for arch in ("mlp", "lenet"):
        torch.manual_seed(0)
        paths[arch] = str(folder / f"{arch}.pt")
        models.save(paths[arch], arch, models.build(arch), pre)
    return paths


def _step_main(argv):
    return step_script.main(step_script.get_args_parser().parse_args(argv))


def test_step_script_runs_end_to_end(tmp_path, checkpoints):
    report = _step_main(["--models", "mlp", "lenet", "--batch-sizes", "2", "3", "--repeats", "2", "--warmup", "1",
                         "--max-iter", "2", "--isolation", "inprocess", "--threads", "1", "--output", str(tmp_path),
                         "--rounds", "3",
                         "--reference", checkpoints["mlp"], "--reference", checkpoints["lenet"]])
    for suffix in ("json", "md", "png"):
        assert (tmp_path / f"step.{suffix}").stat().st_size > 0
    saved = json.loads((tmp_path / "step.json").read_text())
    assert len(saved["results"]) == 2 * 2 * len(V.VARIANTS) and not any("error" in r for r in saved["results"])
    assert set(saved["equivalence"]) == {"mlp", "lenet"} and saved["machine"]["torch"] == torch.__version__
    assert all(r["repeats"] == 2 and r["median_s"] > 0 for r in saved["results"])
    assert len(report["ratios"]) == 4 and not report["target"]["in_run"]
    md = (tmp_path / "step.md").read_text()
    assert "| lenet | 3 | 5. autograd-shortcut |" in md and "| lenet | 3 | 1g. revnet-graph |" in md
    assert "not measured in this run" in md
    assert all(r["graph_vs_sequential"] > 0 for r in report["ratios"])
    # the interleaved rounds: every variant once per round, the ratios per round with their spread
    assert len(saved["interleaved"]) == 4 and all(b["rounds"] == 3 for b in saved["interleaved"])
    block = saved["interleaved"][0]
    assert set(block["variants"]) == set(V.VARIANTS) and block["variants"]["revnet"]["repeats"] == 3
    sp = block["revnet_over"]["autograd-shortcut"]
    assert sp["n"] == 3 and sp["min"] <= sp["median"] <= sp["max"]
    ratio = next(r for r in report["ratios"] if r["model"] == block["model"] and r["batch_size"] == block["batch_size"])
    assert ratio["time_source"] == "interleaved rounds" and ratio["time_vs_shortcut"] == sp["median"]
    assert "## Interleaved rounds (one process)" in md and [t["model"] for t in report["targets"]] == ["lenet", "mlp"]


def test_min_repeats_caps_a_slow_variant(tmp_path, checkpoints):
    report = _step_main(["--models", "mlp", "--batch-sizes", "2", "--variants", "revnet", "revnet-graph",
                         "--repeats", "5", "--min-repeats", "1", "--time-budget", "0", "--warmup", "0", "--rounds", "0",
                         "--max-iter", "2", "--isolation", "inprocess", "--threads", "1", "--output", str(tmp_path),
                         "--reference", checkpoints["mlp"]])
    assert [r["repeats"] for r in report["results"]] == [1, 1]
    assert "at least 1" in report["timing_method"]


def test_graph_vs_sequential_mode_runs_interleaved(tmp_path, checkpoints):
    report = _step_main(["--graph-vs-sequential", "--batch-sizes", "3", "--pairs", "4", "--warmup", "0",
                         "--max-iter", "2", "--check-batch", "4", "--threads", "1", "--output", str(tmp_path),
                         "--reference", checkpoints["lenet"]])
    saved = json.loads((tmp_path / "graph-vs-sequential.json").read_text())
    (r,) = saved["results"]
    assert r["model"] == "lenet" and r["batch_size"] == 3 and r["pairs"] == 4 and not r["target_configuration"]
    assert r["sequential"]["repeats"] == r["graph"]["repeats"] == 4 and len(r["pair_ratio"]["values"]) == 4
    assert r["pair_ratio"]["min"] <= r["pair_ratio"]["median"] <= r["pair_ratio"]["max"]
    assert r["same_step"]["iterations_equal"] and r["same_step"]["loss_rel_diff"] <= 1e-6
    assert saved["equivalence"]["lenet"]["revnet-graph"]["grad_error"] <= 1
    assert report["results"][0]["ratio_of_medians"] == pytest.approx(r["ratio_of_medians"])
    md = (tmp_path / "graph-vs-sequential.md").read_text()
    assert "| lenet | 3 | 4 |" in md and "ratio of medians" in md and "not the target configuration" in md


def test_step_script_subprocess_memory_amp_and_no_early_stop(tmp_path, checkpoints):
    report = _step_main(["--models", "mlp", "--batch-sizes", "2", "--repeats", "2", "--warmup", "0",
                         "--max-iter", "2", "--variants", "revnet", "autograd-shortcut", "--no-early-stop", "--amp",
                         "--rounds", "2",
                         "--threads", "1", "--output", str(tmp_path), "--reference", checkpoints["mlp"]])
    assert (tmp_path / "step-amp-no-early-stop.json").is_file() and (tmp_path / "step-amp-no-early-stop.png").is_file()
    assert report["equivalence"]["mlp"]["revnet"]["mean_iterations"] == 2
    for r in report["results"]:
        assert "error" not in r, r.get("error")
        assert r["peak_mib"] > 0 and "VmHWM" in r["memory_method"]
        assert r["max_iterations"] == 2 and "amp_vs_fp32" in r
    md = (tmp_path / "step-amp-no-early-stop.md").read_text()
    assert "Mixed precision (bfloat16)" in md and "--no-early-stop" in md


def test_reference_is_trained_once_and_cached(tmp_path):
    args = step_script.get_args_parser().parse_args(["--cache-dir", str(tmp_path), "--ref-epochs", "1"])
    first = step_problems.reference_checkpoints(args, ["mlp"])["mlp"]
    assert first["origin"].startswith("trained") and Path(first["path"]).is_file()
    second = step_problems.reference_checkpoints(args, ["mlp"])["mlp"]
    assert second["origin"].startswith("cached") and second["path"] == first["path"]
    models.load(first["path"], arch="mlp")


def test_deepfool_script_runs_end_to_end(tmp_path, checkpoints):
    report = deepfool_script.main(deepfool_script.get_args_parser().parse_args(
        ["--models", "lenet", "--reference", checkpoints["lenet"], "--num-images", "4", "--batch-size", "2",
         "--classes", "10", "20", "--candidates", "5", "--scaling-batch", "4", "--max-iter", "3", "--repeats", "2",
         "--warmup", "0", "--threads", "1", "--output", str(tmp_path)]))
    saved = json.loads((tmp_path / "deepfool.json").read_text())
    # four engines, foolbox (test extra) and torchattacks (optional bench extra: a row either way)
    assert [r["engine"] for r in saved["mnist"]] == ["revnet", "loop", "batched", "func", "foolbox", "torchattacks"]
    assert len(saved["scaling"]) == 4 * 4
    assert not any("error" in r for r in saved["mnist"] + saved["scaling"])
    assert {(r["classes"], r["candidates"]) for r in report["scaling"]} == {(10, 10), (10, 5), (20, 20), (20, 5)}
    rows = {r["engine"]: r for r in saved["mnist"]}
    for name in ("loop", "foolbox"):  # interleaved rounds: one ratio per round, and the norms against revnet's
        assert rows[name]["repeats"] == 2 and rows[name]["revnet_speedup"]["min"] > 0
        assert 0.9 < rows[name]["norm_ratio"] < 1.1
    assert rows["loop"]["norm_ratio"] == pytest.approx(1, abs=1e-4)  # the same algorithm
    ta = rows["torchattacks"]
    assert ta.get("missing", "").startswith("not installed") or (ta["images"] == 4 and 0.9 < ta["norm_ratio"] < 1.1)
    md = (tmp_path / "deepfool.md").read_text()
    assert "## Scaling with the number of classes" in md and "| lenet | revnet |" in md
    assert "### Against the targets" in md and "revnet vs foolbox" in md


def test_a_peer_that_is_installed_but_does_not_import_is_a_reason_not_a_crash(tmp_path, monkeypatch):
    """A peer carried as a wheel without a dependency of its own (foolbox without GitPython on the GPU machine):
    ``missing`` names the import error in one line, so its rows say so and the other engines still run."""
    from revnet_app.benchmarks import peers

    package = tmp_path / "carriedpeer"
    package.mkdir()
    (package / "__init__.py").write_text("import a_dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reason = peers.missing("carriedpeer")
    assert reason == ("installed but does not import (ModuleNotFoundError: No module named "
                      "'a_dependency_nobody_installed')")
    assert peers.missing("torch") is None


def test_deepfool_script_reports_a_missing_peer(tmp_path, checkpoints, monkeypatch):
    real = deepfool_script.missing
    monkeypatch.setattr(deepfool_script, "missing", lambda name: "not installed (test)" if name == "foolbox"
                        else real(name))
    deepfool_script.main(deepfool_script.get_args_parser().parse_args(
        ["--parts", "mnist", "--models", "lenet", "--reference", checkpoints["lenet"], "--num-images", "2",
         "--batch-size", "2", "--max-iter", "2", "--repeats", "1", "--warmup", "0", "--engines", "revnet", "loop",
         "--peers", "foolbox", "--threads", "1", "--profile", "--output", str(tmp_path)]))
    md = (tmp_path / "deepfool.md").read_text()
    assert "| lenet | foolbox | not installed (test) |" in md
    profile = (tmp_path / "deepfool-profile.md").read_text()
    assert "## lenet, revnet" in profile and "## lenet, loop" in profile and "Self CPU" in profile


def test_compile_flag_adds_variant_1c_and_keeps_it_out_of_the_float64_check():
    args = step_script.get_args_parser().parse_args(["--compile", "--variants", "revnet", "autograd-shortcut"])
    assert step_problems.variants_for(args, "lenet") == ["revnet", "revnet-compiled", "autograd-shortcut"]
    plain = step_script.get_args_parser().parse_args([])
    assert "revnet-compiled" not in step_problems.variants_for(plain, "lenet")
    assert V.ALL_VARIANTS["revnet-compiled"].number == "1c" and "revnet-compiled" not in V.VARIANTS


@pytest.mark.parametrize("arch, shape", [("convnet-cifar", (3, 32, 32)), ("resnet18-224", (3, 224, 224))])
def test_random_models_give_their_batches(arch, shape):
    net, x, y = step_problems.random_batch(arch, 2, torch.device("cpu"), torch.float32)
    assert x.shape == (2, *shape) and y.shape == (2,)
    with torch.no_grad():
        pred = net(x).argmax(1)
    assert pred.shape == (2,) and y[0] != pred[0] and y[1] == pred[1]  # every 4th label shifted: targeted DeepFool
    args = step_script.get_args_parser().parse_args(["--models", arch])
    assert step_problems.batch_sizes_for(args, arch) == [step_problems.RANDOM_SPECS[arch][1]]

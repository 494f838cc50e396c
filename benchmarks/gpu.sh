#!/usr/bin/env bash
# The GPU checks in one call (one H100/H200, < 5 minutes): the CUDA tests, then benchmarks/step.py (the Deep
# Defense training step, revnet against the autograd variants) and benchmarks/deepfool.py (evaluation DeepFool
# throughput) in float32 and under bf16 autocast. Results: JSON/Markdown/PNG under $RESULTS (default
# benchmarks/results/gpu/), one folder per run, and a log of every command.
#
#   bash benchmarks/gpu.sh            # on the GPU machine
#   bash benchmarks/gpu.sh --quick    # anywhere (CPU too): the same commands, tiny budgets, so the script cannot rot
#
# torch.compile is not run yet (issue 17 adds it); neither are the CIFAR ConvNet or 224-px ResNet-18 steps, which
# step.py does not time yet.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
RESULTS=${RESULTS:-benchmarks/results/gpu}
CACHE=${CACHE:-/tmp/revnet-gpu-refs}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu.log"
: > "$LOG"

FAILED=0
run() {  # run a command, its output into the log (and the terminal), its wall time and exit status after it;
         # a failing command does not stop the others (the script exits 1 at the end)
  echo "\$ $*" | tee -a "$LOG"
  local t0=$SECONDS rc
  set +e
  "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  echo "[$((SECONDS - t0)) s, exit $rc]" | tee -a "$LOG"
  [[ $rc == 0 ]] || FAILED=$((FAILED + 1))
}

if [[ $QUICK == 1 ]]; then
  DEVICE=${DEVICE:-cpu}
  STEP=(--models lenet --batch-sizes 10 --variants revnet autograd-shortcut --warmup 0 --repeats 1 --min-repeats 1
        --time-budget 1 --ref-epochs 1)
  RESNET=()
  DEEPFOOL=(--parts mnist --models lenet --num-images 20 --batch-size 10 --warmup 0 --repeats 1 --time-budget 1
            --ref-epochs 1 --engines revnet batched)
else
  DEVICE=${DEVICE:-cuda}
  STEP=(--models mlp lenet --batch-sizes 100 1000 --warmup 2 --repeats 20 --min-repeats 3 --time-budget 2)
  RESNET=(--models resnet18-32 --batch-sizes 128 --warmup 1 --repeats 10 --min-repeats 1 --time-budget 4)
  DEEPFOOL=(--parts mnist scaling --models mlp lenet --num-images 1000 --batch-size 1000 --warmup 1 --repeats 5
            --time-budget 3)
fi
COMMON=(--device "$DEVICE" --cache-dir "$CACHE")

run "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
if [[ $QUICK == 0 ]]; then
  run "$PY" -m pytest -q -p no:cacheprovider tests/test_deepfool.py tests/test_losses.py -k cuda
fi
for amp in "" "--amp --amp-dtype bfloat16"; do
  tag=$([[ -z $amp ]] && echo fp32 || echo bf16)
  # shellcheck disable=SC2086
  run "$PY" benchmarks/step.py "${STEP[@]}" "${COMMON[@]}" --isolation inprocess $amp --output "$RESULTS/step-$tag"
  if [[ ${#RESNET[@]} -gt 0 ]]; then
    # shellcheck disable=SC2086
    run "$PY" benchmarks/step.py "${RESNET[@]}" "${COMMON[@]}" --isolation inprocess $amp --output "$RESULTS/step-resnet18-32-$tag"
  fi
  # shellcheck disable=SC2086
  run "$PY" benchmarks/deepfool.py "${DEEPFOOL[@]}" "${COMMON[@]}" $amp --output "$RESULTS/deepfool-$tag"
done
echo "results in $RESULTS; $FAILED command(s) failed" | tee -a "$LOG"
[[ $FAILED == 0 ]]

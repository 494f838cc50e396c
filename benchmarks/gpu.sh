#!/usr/bin/env bash
# The GPU checks in one call (one H100/H200; aimed at about 5 minutes, not yet timed in this form): the CUDA tests,
# then benchmarks/step.py (the Deep Defense training step, revnet against the autograd variants, interleaved
# rounds) for LeNet and the MLP (batch 100 and 1000, float32 and bf16 autocast), the CIFAR ConvNet (batch 128) and
# ResNet-18 (32 px batch 128, 224 px batch 32; float32), torch.compile off and on (LeNet batch 100, float32), and
# benchmarks/deepfool.py (evaluation DeepFool throughput against autograd and foolbox, LeNet/MLP at batch 100 and
# 1000, float32 and bf16). Results:
# JSON/Markdown/PNG under $RESULTS (default runs/benchmarks/gpu/, a scratch folder; RESULTS=benchmarks/results/gpu
# updates the committed results), one folder per run, and a log of every command.
#
#   RESULTS=benchmarks/results/gpu bash benchmarks/gpu.sh   # on the GPU machine, into the committed results
#   bash benchmarks/gpu.sh --quick    # anywhere (CPU too): the same commands, tiny budgets, no compile, so the
#                                     # script cannot rot (tests/app/test_gpu_script.py)
#
# The last full run (benchmarks/results/gpu/gpu.log) predates the ConvNet, the 224-px ResNet, compile and the
# peers; it took 339 s.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
RESULTS=${RESULTS:-runs/benchmarks/gpu}
CACHE=${CACHE:-/tmp/revnet-gpu-refs}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
# revnet and revnet_app (train/, models/, benchmarks/) as the checkout's editable install; offline, no dependencies
"$PY" -c "import revnet_app" 2>/dev/null || "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
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
        --time-budget 1 --ref-epochs 1 --rounds 1)
  RANDOM_STEPS=()
  COMPILE=()
  DEEPFOOL=(--parts mnist --models lenet --num-images 20 --warmup 0 --repeats 1 --time-budget 1
            --ref-epochs 1 --engines revnet batched --peers foolbox)
  DEEPFOOL_BATCHES=(10)
else
  DEVICE=${DEVICE:-cuda}
  STEP=(--models mlp lenet --batch-sizes 100 1000 --warmup 2 --repeats 10 --min-repeats 3 --time-budget 1
        --rounds 5 --rounds-budget 3)
  # name:batch, with the variants that finish in seconds on these networks
  RANDOM_STEPS=(convnet-cifar:128 resnet18-32:128 resnet18-224:32)
  RANDOM_ARGS=(--variants revnet autograd-batched autograd-shortcut --warmup 1 --repeats 5 --min-repeats 1
               --time-budget 2 --rounds 3 --rounds-budget 4)
  COMPILE=(--variants revnet autograd-shortcut --warmup 2 --repeats 10 --min-repeats 3 --time-budget 1 --rounds 5
           --rounds-budget 3 --compile)
  DEEPFOOL=(--parts mnist --models mlp lenet --num-images 1000 --warmup 1 --repeats 5 --time-budget 3
            --peers foolbox)
  DEEPFOOL_BATCHES=(100 1000)
fi
COMMON=(--device "$DEVICE" --cache-dir "$CACHE")

run "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
if [[ $QUICK == 0 ]]; then
  run "$PY" -m pytest -q -p no:cacheprovider tests/lib/test_deepfool.py tests/lib/test_losses.py -k cuda
fi
for amp in "" "--amp --amp-dtype bfloat16"; do
  tag=$([[ -z $amp ]] && echo fp32 || echo bf16)
  # shellcheck disable=SC2086
  run "$PY" benchmarks/step.py "${STEP[@]}" "${COMMON[@]}" --isolation inprocess $amp --output "$RESULTS/step-$tag"
  for spec in $([[ -z $amp ]] && echo "${RANDOM_STEPS[@]}"); do  # float32 only (the time budget)
    model=${spec%%:*} batch=${spec##*:}
    # shellcheck disable=SC2086
    run "$PY" benchmarks/step.py --models "$model" --batch-sizes "$batch" "${RANDOM_ARGS[@]}" "${COMMON[@]}" \
      --isolation inprocess $amp --output "$RESULTS/step-$model-$tag"
  done
  for batch in "${DEEPFOOL_BATCHES[@]}"; do
    # shellcheck disable=SC2086
    run "$PY" benchmarks/deepfool.py "${DEEPFOOL[@]}" --batch-size "$batch" "${COMMON[@]}" $amp \
      --output "$RESULTS/deepfool-b$batch-$tag"
  done
done
if [[ ${#COMPILE[@]} -gt 0 ]]; then  # torch.compile on (variant 1c), float32, LeNet batch 100
  run "$PY" benchmarks/step.py --models lenet --batch-sizes 100 "${COMPILE[@]}" "${COMMON[@]}" --isolation inprocess \
    --output "$RESULTS/step-compile-fp32"
fi
echo "results in $RESULTS; $FAILED command(s) failed" | tee -a "$LOG"
[[ $FAILED == 0 ]]

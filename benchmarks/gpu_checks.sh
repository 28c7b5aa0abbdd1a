#!/usr/bin/env bash
# Every check of issue 10 that needs a CUDA GPU, in one prepared run (figures for benchmarks/README.md):
#   here:  bash scripts/device-bundle.sh        (wheels + MiniLM tokenizer into .device/)
#   there: bash benchmarks/gpu_checks.sh        (carry .device; COMPILE=1 adds the torch.compile rows)
# DEVICE=cpu SIZE=tiny BENCH_ARGS='--steps 2 --warmup 1' runs the same wiring on a CPU (a smoke test of this script, not figures).
# Writes at most 7 files under $OUT (default build/gpu-checks): gpu.txt, bert_base.txt, vit_base.txt,
# [bert_compiled.txt], cuda_runs.txt, gpu_tests.txt, tests.txt. Each step has its own time limit; one failing step
# does not stop the others, and the script's exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-checks}
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-240}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-base}
export PY DEVICE
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .device/wheels ] && ! "$PY" -c "import submitit, jsonlines, mlxtend" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/robustmtl-site .device/wheels/*.whl
  export PYTHONPATH=/tmp/robustmtl-site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
tokenizer=minilm
[ -d .device/minilm ] && tokenizer=.device/minilm
failed=()

step() {  # step NAME COMMAND...: output to the terminal and $OUT/NAME.txt
  local name=$1
  shift
  echo "== $name: $*" | tee "$OUT/$name.txt"
  timeout "$LIMIT" "$@" 2>&1 | tee -a "$OUT/$name.txt" || failed+=("$name")
}

cuda_runs() {  # the training loop itself on CUDA: every precision, gDRO's on-device q, peak memory in DONE
  local work
  work=$(mktemp -d)
  for spec in "mtl_l1 bf16" "gdro bf16" "erm fp16" "mtl_l1 fp32"; do
    set -- $spec
    "$PY" -m robustmtl run --method "$1" --dataset synthetic --precision "$2" --device "$DEVICE" --set epochs=2 \
      --out "$work/$1-$2" || return 1
    "$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], {k: d.get(k) for k in \
      ('precision', 'wall_s', 'gpu_hours', 'peak_mem_mb')})" "$work/$1-$2/DONE" "$1"
  done
}
export -f cuda_runs

nvidia-smi > "$OUT/gpu.txt" 2>&1 || failed+=(gpu)
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
  >> "$OUT/gpu.txt" 2>&1 || failed+=(torch)
read -ra extra <<< "${BENCH_ARGS:-}"  # e.g. BENCH_ARGS="--steps 50"
bench=("$PY" benchmarks/train_step.py --size "$SIZE" --batch 32 --device "$DEVICE" "${extra[@]}")
step bert_base "${bench[@]}" --model bert --length 256 --tokenizer "$tokenizer"
step vit_base "${bench[@]}" --model vit --length 224
if [ "${COMPILE:-0}" = 1 ]; then
  step bert_compiled "${bench[@]}" --model bert --length 256 --tokenizer "$tokenizer" --compile
fi
step cuda_runs bash -c cuda_runs
# The CUDA paths no CPU runs (tests/test_gpu.py, marker gpu): precision under autocast and the GradScaler, TF32,
# fused AdamW, peak memory and gpu_hours in the records, a local grid handing its runs the GPU.
step gpu_tests "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/
step tests "$PY" -m pytest -q -p no:cacheprovider tests/test_models_timm.py tests/test_train_speed.py \
  tests/test_evaluate.py tests/test_methods_gdro.py
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all GPU checks ran; figures in $OUT"

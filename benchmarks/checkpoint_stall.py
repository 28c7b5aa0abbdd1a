"""How long a checkpoint holds up training, at the size users run: `python benchmarks/checkpoint_stall.py`.

Builds a state shaped like BERT-base's under AdamW (110M float32 parameters, two moment buffers of the
same size, a step count per tensor), saves it with the loop's own `checkpoint.save` (torch.save streamed
into the temp file, fsync, rename) into a folder you choose (`--dir`, default a temporary folder on this
disk: point it at the cluster's shared storage to measure that), and prints the size, the seconds per
save and the write rate, and the peak of the process's resident memory during the saves, which shows
whether the state was held a second time. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from robustmtl.train import checkpoint

BERT_BASE_PARAMS = 109_482_240  # bert-base-uncased's parameter count
TENSORS = 199  # its parameter tensors


def adamw_like_state(n_params: int, tensors: int) -> dict:
    sizes = [n_params // tensors] * tensors
    sizes[-1] += n_params - sum(sizes)
    gen = torch.Generator().manual_seed(0)
    model = {f"p{i}": torch.randn(size, generator=gen) for i, size in enumerate(sizes)}
    moments = {i: {"step": torch.tensor(1000.0), "exp_avg": torch.randn(size, generator=gen),
                   "exp_avg_sq": torch.rand(size, generator=gen)} for i, size in enumerate(sizes)}
    return {"model": model, "optimizer": {"state": moments, "param_groups": [{"params": list(range(tensors))}]}}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=BERT_BASE_PARAMS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    state = adamw_like_state(args.params, TENSORS)
    state_gb = sum(t.numel() * t.element_size() for t in _tensors(state)) / 1e9
    before = peak_rss_gb()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "checkpoint.pt"
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            checkpoint.save(path, state)
            times.append(time.perf_counter() - started)
        size_gb = path.stat().st_size / 1e9
    best = min(times)
    print(f"state: {args.params / 1e6:.1f}M parameters + AdamW moments = {state_gb:.2f} GB in memory")
    print(f"checkpoint file: {size_gb:.2f} GB")
    print("save (write + fsync + rename), s: " + ", ".join(f"{t:.2f}" for t in times)
          + f"; best {best:.2f} s = {size_gb / best:.2f} GB/s")
    print(f"peak resident memory: {before:.2f} GB before the saves, {peak_rss_gb():.2f} GB after "
          f"(a second in-memory copy would add ~{state_gb:.2f} GB)")


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, list):
        return [t for v in obj for t in _tensors(v)]
    return []


if __name__ == "__main__":
    main()

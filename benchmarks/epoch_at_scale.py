"""One epoch at the size users run, with the model replaced by a stand-in: where would a GPU wait?

    python benchmarks/epoch_at_scale.py                      # Waterbirds-sized JPEGs and a MultiNLI-sized token set
    python benchmarks/epoch_at_scale.py --only image --scale 0.25 --workers 2

The parts around the model are the package's own: the Waterbirds plug-in reads a generated copy of the
dataset's layout (`metadata.csv` + 500×375 JPEGs, `image_files.waterbirds_like_jpegs`), the training
batches come from the loop's DataLoader (`train.batches`), evaluation is the loop's `Evaluator` on
validation, test and the `eval_train` subsample of the training split, the decoded-image cache is
`data.image_cache`, and a checkpoint is `train.checkpoint.save` of a state of the model's size under
AdamW. Only the model is a stand-in: each training step sleeps for the time the step would take on
the GPU (`--step-ms`, else from the analytic FLOP count at `--mfu` of `--peak-tflops`, an H100 SXM's
dense bf16 peak by default), each evaluation batch for its forward's share (a third of a step's FLOPs).
Sleeping releases the CPU to the loader's workers, as a GPU step does.

Printed per data path (images decoded per batch, or read from the cache): the epoch's time split into
stand-in steps, waiting for batches, evaluation and the end-of-epoch checkpoint; the data path's
images/s per worker for decoding and for the cache; evaluation's data-path time per image against
training's at the same worker count (target <= 1.2); and, projected from the per-worker rate, the share
of an epoch a GPU would wait for data with `--project-workers` (default 12) workers (target < 10%).
Figures, not assertions: benchmarks/README.md says what was measured where.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoint_stall import adamw_like_state
from image_files import waterbirds_like_jpegs

from robustmtl.data.base import Split, Splits, VectorSplit
from robustmtl.data.image_cache import cache_images
from robustmtl.data.text import TokenSplit
from robustmtl.params import NoParams
from robustmtl.registry import dataset_plugin
from robustmtl.train import checkpoint
from robustmtl.train.batches import EpochPlan, PlanSampler, chunks, make_loader
from robustmtl.train.evaluate import Evaluator, fixed_subset

WATERBIRDS = {"train": 4_795, "val": 1_199, "test": 5_794}
MULTINLI = {"train": 206_175, "val": 82_462, "test": 123_712}  # group DRO's split of MNLI
VIT_B16 = {"layers": 12, "hidden": 768, "params": 85_800_000, "patch": 16}
BERT_BASE = {"layers": 12, "hidden": 768, "params": 109_500_000}
H100_SXM_BF16_TFLOPS = 989.0


@dataclass
class Epoch:
    """Seconds of one epoch, by part."""

    steps: float
    wait: float
    evaluation: float
    checkpoint: float
    examples: int
    evaluated: int

    @property
    def total(self) -> float:
        return self.steps + self.wait + self.evaluation + self.checkpoint


class StandIn(torch.nn.Module):
    """A model whose forward takes `seconds_per_example` × batch size and predicts class 0."""

    def __init__(self, seconds_per_example: float, n_classes: int) -> None:
        super().__init__()
        self.seconds_per_example = seconds_per_example
        self.n_classes = n_classes

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = len(batch["y"])
        time.sleep(self.seconds_per_example * n)
        return torch.zeros(n, self.n_classes)


def encoder_flops(layers: int, hidden: int, tokens: int) -> float:
    """Forward FLOPs of one example through a transformer encoder: 24·d² per token and layer for the
    projections and MLP, 4·T·d for attention scores and values (multiply-adds counted as two)."""
    return layers * tokens * (24 * hidden * hidden + 4 * tokens * hidden)


def train_step_seconds(forward_flops: float, examples: int, mfu: float, peak_tflops: float) -> float:
    """A training step is three forwards' FLOPs (forward, and backward at twice that)."""
    return 3 * forward_flops * examples / (mfu * peak_tflops * 1e12)


class TrainingPath:
    """The loop's training loader over one split, its workers started once (as in a run's attempt)."""

    def __init__(self, split: Split, batch: int, workers: int) -> None:
        self.split, self.batch = split, batch
        self.sampler = PlanSampler()
        self.loader = make_loader(split, self.sampler, workers, pin_memory=False)

    def epoch(self, step_s: float, seed: int = 0) -> tuple[float, float]:
        """(stand-in step seconds, seconds waiting for batches) of one epoch."""
        order = torch.randperm(len(self.split), generator=torch.Generator().manual_seed(seed))
        self.sampler.set(EpochPlan(chunks(order, self.batch), None, self.batch), 0)
        items = iter(self.loader)
        wait = steps = 0.0
        while True:
            started = time.perf_counter()
            try:
                next(items)
            except StopIteration:
                break
            wait += time.perf_counter() - started
            if step_s:
                time.sleep(step_s)
                steps += step_s
        return steps, wait


class EvaluationPath:
    """The loop's `Evaluator` over validation, test and the training subsample, its workers started once."""

    def __init__(self, splits: dict[str, Split], batch: int, workers: int, eval_train: int, n_classes: int) -> None:
        self.evaluator = Evaluator(splits, batch, torch.device("cpu"), num_workers=workers)
        self.passes = [(name, fixed_subset(len(splits[name]), eval_train, 0) if name == "train" else None)
                       for name in ("train", "val", "test") if name != "train" or eval_train != 0]
        self.examples = sum(len(splits[name]) if subset is None else len(subset) for name, subset in self.passes)
        self.n_classes = n_classes

    def run(self, per_example_s: float) -> float:
        """Seconds of one end-of-epoch evaluation with a stand-in forward of `per_example_s` an example."""
        model = StandIn(per_example_s, self.n_classes)
        started = time.perf_counter()
        for name, subset in self.passes:
            self.evaluator.predict(model, name, subset)  # type: ignore[arg-type]  # called and eval()ed only
        return time.perf_counter() - started


def checkpoint_seconds(params: int, folder: Path) -> float:
    state = adamw_like_state(params, 199)
    started = time.perf_counter()
    checkpoint.save(folder / "checkpoint.pt", state)
    seconds = time.perf_counter() - started
    (folder / "checkpoint.pt").unlink()
    return seconds


def per_worker_rate(split: Split, batch: int) -> float:
    """Examples/s one process gets building a split's batches (decoding files, reading cache rows, padding ids)."""
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(1))[: max(batch * 8, 256)]
    started = time.perf_counter()
    for chunk in idx.split(batch):
        split[chunk]
    return len(idx) / (time.perf_counter() - started)


def waterbirds_copy(root: Path, scale: float) -> Path:
    """A generated directory in Waterbirds' layout with its split sizes × `scale` (reused when present)."""
    folder = root / "waterbirds"
    sizes = {name: max(64, round(n * scale)) for name, n in WATERBIRDS.items()}
    meta = folder / "metadata.csv"
    if meta.exists() and len(meta.read_text().splitlines()) == 1 + sum(sizes.values()):
        return folder
    total = sum(sizes.values())
    print(f"generating {total} JPEGs in {folder / 'images'} ...", flush=True)
    paths = waterbirds_like_jpegs(folder / "images", total)
    rng = np.random.default_rng(0)
    lines, i = ["img_filename,y,split,place"], 0
    for code, name in enumerate(("train", "val", "test")):
        for _ in range(sizes[name]):
            lines.append(f"images/{paths[i].name},{rng.integers(2)},{code},{rng.integers(2)}")
            i += 1
    meta.write_text("\n".join(lines) + "\n")
    return folder


def token_splits(scale: float, seed: int = 0) -> dict[str, Split]:
    """MultiNLI-sized token splits: pair lengths drawn around MNLI's (median ~40 word pieces, at most 128)."""
    gen = np.random.default_rng(seed)
    splits: dict[str, Split] = {}
    for name, n in MULTINLI.items():
        n = max(256, round(n * scale))
        lengths = np.clip(gen.lognormal(np.log(40), 0.45, n).astype(np.int64), 8, 128)
        offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
        ids = torch.from_numpy(gen.integers(1000, 30000, int(offsets[-1]), dtype=np.int32))
        y = torch.from_numpy(gen.integers(0, 3, n))
        raw = VectorSplit(name, torch.zeros(n, 1), y, 2 * y + torch.from_numpy(gen.integers(0, 2, n)), n_groups=6)
        splits[name] = TokenSplit(raw, ids, offsets, torch.zeros_like(ids, dtype=torch.int8), pad_id=0)
    return splits


def print_epoch(label: str, epoch: Epoch) -> None:
    parts = {"steps": epoch.steps, "waiting for batches": epoch.wait, "evaluation": epoch.evaluation,
             "checkpoint": epoch.checkpoint}
    shares = ", ".join(f"{name} {s:.1f} s ({100 * s / epoch.total:.0f}%)" for name, s in parts.items())
    print(f"  {label}: epoch {epoch.total:.1f} s = {shares}; {epoch.examples} trained, {epoch.evaluated} evaluated")


def projected_wait_share(examples: int, rate_per_worker: float, workers: int, steps_s: float) -> float:
    """The share of an epoch spent waiting when `workers` supply `rate_per_worker` images/s each and the
    steps take `steps_s` in all: the loader overlaps the steps, so the wait is what supply lacks."""
    supply_s = examples / (rate_per_worker * workers)
    wait = max(0.0, supply_s - steps_s)
    return wait / (steps_s + wait)


def image_study(args: argparse.Namespace, root: Path) -> None:
    folder = waterbirds_copy(root, args.scale)
    tokens = (args.size // VIT_B16["patch"]) ** 2 + 1
    fwd = encoder_flops(VIT_B16["layers"], VIT_B16["hidden"], tokens)
    step_s = args.step_ms / 1000 if args.step_ms else train_step_seconds(fwd, args.batch, args.mfu, args.peak_tflops)
    per_example_eval = fwd / (args.mfu * args.peak_tflops * 1e12)
    data = dataset_plugin("waterbirds").implementation().build(NoParams(), folder.parent)
    decoded = Splits(data.info, *(s.at_size(args.size) for s in (data.train, data.val, data.test)))
    print(f"\nViT-B/16 at {args.size} px on Waterbirds x {args.scale:g} ({len(decoded.train)} / {len(decoded.val)} / "
          f"{len(decoded.test)}), batch {args.batch}: stand-in step {1000 * step_s:.2f} ms "
          f"({3 * fwd / 1e9:.0f} GFLOP per image at {100 * args.mfu:.0f}% of {args.peak_tflops:g} TFLOP/s), "
          f"{args.workers} workers")
    started = time.perf_counter()
    cached = cache_images(decoded, root / "cache", args.workers)
    build_s = time.perf_counter() - started
    rates = {"decode per batch": per_worker_rate(decoded.train, args.batch),
             "cache": per_worker_rate(cached.train, args.batch)}
    print(f"  images/s per worker: decode {rates['decode per batch']:.0f}, cache read {rates['cache']:.0f} "
          f"(cache build of all splits {build_s:.1f} s with {args.workers} processes, page cache warm after)")
    ckpt = 0.0 if args.no_checkpoint else checkpoint_seconds(VIT_B16["params"], root)
    report(args, {"decode per batch": decoded, "cache": cached}, rates, step_s, per_example_eval, ckpt, 2)


def text_study(args: argparse.Namespace, root: Path) -> None:
    splits = token_splits(args.scale)
    train = splits["train"]
    assert isinstance(train, TokenSplit)
    mean_tokens = float((train.offsets[-1]) / len(train))
    # a batch pads to its longest example: the expected maximum of `batch` lengths sets the step's tokens
    longest = int(np.mean([int((train.offsets[1:] - train.offsets[:-1])[torch.randint(len(train), (args.batch,))]
                                .max()) for _ in range(200)]))
    fwd = encoder_flops(BERT_BASE["layers"], BERT_BASE["hidden"], longest)
    step_s = args.step_ms / 1000 if args.step_ms else train_step_seconds(fwd, args.batch, args.mfu, args.peak_tflops)
    # evaluation batches are sorted by length, so they pad to about the mean length
    per_example_eval = encoder_flops(BERT_BASE["layers"], BERT_BASE["hidden"], round(mean_tokens)) / (
        args.mfu * args.peak_tflops * 1e12)
    print(f"\nBERT-base on MultiNLI x {args.scale:g} ({len(train)} / {len(splits['val'])} / {len(splits['test'])} "
          f"pairs, mean {mean_tokens:.0f} tokens, a batch padded to ~{longest}), batch {args.batch}: stand-in step "
          f"{1000 * step_s:.2f} ms at {100 * args.mfu:.0f}% of {args.peak_tflops:g} TFLOP/s, {args.workers} workers")
    ckpt = 0.0 if args.no_checkpoint else checkpoint_seconds(BERT_BASE["params"], root)
    rates = {"token ids": per_worker_rate(train, args.batch)}
    print(f"  pairs/s per worker: {rates['token ids']:.0f}")
    report(args, {"token ids": Splits(None, train, splits["val"], splits["test"])},  # type: ignore[arg-type]
           rates, step_s, per_example_eval, ckpt, 3)


def report(args: argparse.Namespace, paths: dict[str, Splits], rates: dict[str, float], step_s: float,
           per_example_eval: float, ckpt: float, n_classes: int) -> None:
    for label, splits in paths.items():
        named = {"train": splits.train, "val": splits.val, "test": splits.test}
        training = TrainingPath(splits.train, args.batch, args.workers)
        evaluating = EvaluationPath(named, 2 * args.batch, args.workers, args.eval_train, n_classes)
        training.epoch(0.0, seed=1)  # warm: workers started, files in the page cache, as from a run's second epoch
        evaluating.run(0.0)
        # the data paths alone (no stand-in), at the same worker count: evaluation's cost per example against training's
        _, train_wait = training.epoch(0.0)
        eval_alone = evaluating.run(0.0)
        ratio = (eval_alone / evaluating.examples) / (train_wait / len(splits.train))
        steps, wait = training.epoch(step_s)
        eval_s = evaluating.run(per_example_eval)
        epoch = Epoch(steps, wait, eval_s, ckpt, len(splits.train), evaluating.examples)
        print_epoch(label, epoch)
        verdict = "PASS" if ratio <= 1.2 else "FAIL"
        print(f"    data path alone: training {1000 * train_wait / len(splits.train):.3f} ms/example, evaluation "
              f"{1000 * eval_alone / evaluating.examples:.3f} ms/example: ratio {ratio:.2f} (target <= 1.2) {verdict}")
        workers, rate = args.project_workers, rates[label]
        share = projected_wait_share(len(splits.train), rate, workers, steps)
        verdict = "PASS" if share < 0.10 else "FAIL"
        # evaluation overlaps its forwards with its batches too: the slower of the two sets its time
        eval_projected = max(evaluating.examples / (rate * workers), evaluating.examples * per_example_eval)
        print(f"    projected with {workers} workers at {rate:.0f} examples/s each: data waits {100 * share:.0f}% of "
              f"the training part of an epoch (target < 10%) {verdict}; evaluation {eval_projected:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("image", "text"), help="one of the two studies")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the real split sizes")
    parser.add_argument("--workers", type=int, default=len(__import__("os").sched_getaffinity(0)),
                        help="DataLoader workers (default: this machine's CPUs)")
    parser.add_argument("--project-workers", type=int, default=12, help="workers the projection assumes")
    parser.add_argument("--size", type=int, default=224, help="the ViT's input size (the reference: 384)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--eval-train", type=int, default=10_000, help="the run setting eval_train")
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation the stand-in assumes")
    parser.add_argument("--peak-tflops", type=float, default=H100_SXM_BF16_TFLOPS)
    parser.add_argument("--step-ms", type=float, default=0.0, help="the stand-in step's duration (overrides --mfu)")
    parser.add_argument("--no-checkpoint", action="store_true", help="leave the checkpoint out")
    parser.add_argument("--dir", type=Path, default=None, help="where the generated data goes (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if args.only in (None, "image"):
            image_study(args, root)
        if args.only in (None, "text"):
            text_study(args, root)


if __name__ == "__main__":
    main()

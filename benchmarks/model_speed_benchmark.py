"""Fusion-model training speed, as ratios against references measured in the same run.

(a) Training-step FLOP/s ÷ plain ``torch.matmul`` FLOP/s: one full-batch training step (forward, Cox and
    response losses, backward, AdamW step) of ``FusionSurvivalModel`` on a synthetic cohort with every
    feature kept (default 3,000 patients x 5,000 features: 4,000 expression + 1,000 variants), its matrix
    FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``; the reference is a square float32
    ``torch.matmul`` (2,048 x 2,048), i.e. what this machine's BLAS reaches on plain matrix products. A second
    reference: ``torch.matmul`` alone on the step's own products (the operand shapes, strides and dtype of every
    forward and backward product, recorded at the dispatch level), which separates the step's overhead from
    the BLAS's speed on skinny products (hidden 16).
(b) A Lightning epoch ÷ a hand-written PyTorch loop: the same model, data (one full batch on the device) and
    optimiser; Lightning as ``multimodal train`` builds it (``build_trainer`` from ``model.*`` settings), bare
    and with what training adds to it (CSV training curves and the per-epoch last checkpoint that a killed run
    resumes from). Per epoch: runs of ``--epochs`` and ``2 x --epochs`` epochs, differenced; Lightning's fixed
    cost per fit printed apart.
(c) ``--gpu-large``: 10,000 patients x 40,000 features on the GPU (``model.accelerator: cuda``; precision
    ``auto`` = bf16-mixed), for a machine with a CUDA device; not run on a CPU-only machine.

Usage: python benchmarks/model_speed_benchmark.py [--quick] [--patients N --features F] [--epochs E]
                                                   [--only flops|epoch] [--threads T] [--clock wall|process]
       python benchmarks/model_speed_benchmark.py --gpu-large
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def synthetic(n: int, features: int, *, seed: int = 0) -> tuple[dict[str, int], tuple[torch.Tensor, ...]]:
    """A batch as the data module yields it: two modalities (80% / 20% of the features), mask, outcomes."""
    rng = np.random.default_rng(seed)
    dims = {"expression": features - features // 5, "variants": features // 5}
    inputs = [torch.as_tensor(rng.standard_normal((n, d)), dtype=torch.float32) for d in dims.values()]
    mask = torch.as_tensor(rng.random((n, 2)) > 0.05)
    hazard = inputs[0][:, 0].numpy() - 0.5 * inputs[1][:, 0].numpy()
    time_ = torch.as_tensor(rng.exponential(np.exp(-hazard)) * 30, dtype=torch.float32)
    event = torch.as_tensor(rng.random(n) < 0.7, dtype=torch.float32)
    response = torch.as_tensor(np.where(rng.random(n) < 0.5, np.nan, rng.random(n) < 0.4), dtype=torch.float32)
    targets = torch.zeros(n, 0)
    return dims, (*inputs, mask, time_, event, response, targets)


def make_model(dims: dict[str, int], seed: int = 1, **settings):
    from multimodal.model.fusion import FusionSurvivalModel

    torch.manual_seed(seed)
    return FusionSurvivalModel(dims, **settings)  # by default the training defaults (hidden 16, dropout, sum)


#: the clock of every timing: wall time, or with ``--clock process`` this process's CPU time (on a machine
#: shared with other jobs, CPU time counts the work done, not the waits for a core)
CLOCK: Callable[[], float] = time.perf_counter


def matmul_flops_per_s(size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Plain float32 matrix product FLOP/s (2 n^3 per product), median of ``repeats``."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    return 2 * size**3 / median_matmul_seconds(a, b, repeats, device)


def median_matmul_seconds(a: torch.Tensor, b: torch.Tensor, repeats: int, device: str) -> float:
    """Median seconds of ``torch.matmul(a, b)`` over ``repeats`` timed runs after one warm-up."""
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        _sync(device)
        start = CLOCK()
        torch.matmul(a, b)
        _sync(device)
        times.append(CLOCK() - start)
    return statistics.median(times)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


#: the matrix products whose operand shapes :func:`record_products` keeps: (aten packet, operand positions)
_PRODUCTS = {"mm": (0, 1), "bmm": (0, 1), "addmm": (1, 2), "addmm_": (1, 2), "baddbmm": (1, 2), "baddbmm_": (1, 2)}


def record_products(step: Callable[[], object]) -> list[tuple[tuple[int, ...], tuple[int, ...], ...]]:
    """Shapes and strides of both operands of every matrix product ``step()`` runs (forward and backward),
    seen at the ATen dispatch level, in order."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[tuple[int, ...], tuple[int, ...], ...]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            positions = _PRODUCTS.get(func._overloadpacket.__name__)
            if positions is not None:
                a, b = (args[i] for i in positions)
                seen.append((tuple(a.shape), a.stride(), tuple(b.shape), b.stride(), a.dtype))
            return func(*args, **(kwargs or {}))

    with Record():
        step()
    return seen


def same_shape_matmul_flops_per_s(products: list, repeats: int = 5, device: str = "cpu") -> float:
    """FLOP/s of ``torch.matmul`` alone on the step's own products (same operand shapes, strides and dtype;
    2 m k n per product, batch dimensions multiplied in): the BLAS's speed on what the step multiplies,
    without anything else the step does. Each product is timed ``repeats`` times after a warm-up; the sum
    of the per-product medians is the time (robust to one stalled product on a loaded machine)."""
    flops, seconds = 0, 0.0
    for a_shape, a_stride, b_shape, b_stride, dtype in products:
        a = torch.empty_strided(a_shape, a_stride, dtype=dtype, device=device).normal_()
        b = torch.empty_strided(b_shape, b_stride, dtype=dtype, device=device).normal_()
        flops += 2 * a.numel() * b_shape[-1]
        seconds += median_matmul_seconds(a, b, repeats, device)
    return flops / seconds


def hand_step(model, optimiser, batch) -> torch.Tensor:
    """One training step without Lightning: the module's own loss, backward, optimiser step."""
    optimiser.zero_grad(set_to_none=True)
    loss = model.training_step(batch, 0)
    loss.backward()
    optimiser.step()
    return loss


def training_step_ratio(
    n: int, features: int, *, repeats: int, device: str = "cpu", precision: str = "32-true", **settings
):
    """(a): counted FLOPs of one step, its seconds, its FLOP/s, the square matmul reference and the
    same-shape matmul reference (:func:`same_shape_matmul_flops_per_s`)."""
    from torch.utils.flop_counter import FlopCounterMode

    dims, batch = synthetic(n, features)
    batch = tuple(t.to(device) for t in batch)
    model = make_model(dims, **settings).to(device).train()
    model.log_dict = lambda *a, **k: None  # no Trainer attached: logging is Lightning's, not the step's work
    optimiser = model.configure_optimizers()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    with autocast:
        hand_step(model, optimiser, batch)  # warm-up
        with FlopCounterMode(display=False) as counter:
            hand_step(model, optimiser, batch)
        flops = counter.get_total_flops()
        products = record_products(lambda: hand_step(model, optimiser, batch))
        times = []
        for _ in range(repeats):
            _sync(device)
            start = CLOCK()
            hand_step(model, optimiser, batch)
            _sync(device)
            times.append(CLOCK() - start)
    step = statistics.median(times)
    reference = matmul_flops_per_s(device=device)
    same_shapes = same_shape_matmul_flops_per_s(products, device=device)
    return flops, step, flops / step, reference, same_shapes


def epoch_ratio(n: int, features: int, *, epochs: int) -> dict[str, float]:
    """(b): seconds per epoch of Lightning (bare; with CSV curves and per-epoch last checkpoints) and of a
    hand-written loop, on the same model, data module and optimiser; and Lightning's fixed cost per fit.

    Each Lightning variant is fitted for ``epochs`` and for ``2 * epochs`` epochs: the difference over
    ``epochs`` is its cost per epoch, the rest its fixed cost per fit (building the Trainer, which reads every
    installed package's entry points, and setting up the loops), reported apart, not spread over the epochs of
    one fit (which made the ratio depend on how many epochs the benchmark ran)."""
    import lightning as L

    from multimodal.model.data import DeviceBatches
    from multimodal.model.train import (
        TrainParams,
        _rng_state_callback,
        build_trainer,
        last_checkpoint_callback,
        training_curves_callback,
    )

    dims, batch = synthetic(n, features)

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return DeviceBatches(batch)

    def differenced(run_for: Callable[[int], None]) -> tuple[float, float]:
        """(seconds per epoch, fixed seconds) of ``run_for(count)`` timed for ``epochs`` and ``2 * epochs``."""
        seconds = {}
        for count in (epochs, 2 * epochs):
            L.seed_everything(3, verbose=False)
            start = CLOCK()
            run_for(count)
            seconds[count] = CLOCK() - start
        per_epoch = (seconds[2 * epochs] - seconds[epochs]) / epochs
        return per_epoch, seconds[epochs] - epochs * per_epoch

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="multimodal-speed-") as scratch:

        def bare(params: TrainParams):
            return build_trainer(params)

        def with_checkpoints(params: TrainParams):
            callbacks = [_rng_state_callback(), training_curves_callback(Path(scratch) / "log")]
            return build_trainer(params, callbacks=[*callbacks, last_checkpoint_callback(Path(scratch))])

        for name, make in (("lightning", bare), ("lightning_with_checkpoints", with_checkpoints)):

            def fit(count: int, make=make) -> None:
                model, trainer = make_model(dims), make(TrainParams(accelerator="cpu", epochs=count))
                trainer.fit(model, datamodule=Data())

            out[name], out[f"{name}_fixed"] = differenced(fit)

    def hand_loop(count: int) -> None:  # the same difference, so warm-up is left out on both sides
        model = make_model(dims).train()
        model.log_dict = lambda *a, **k: None
        optimiser = model.configure_optimizers()
        for _ in range(count):
            for part in DeviceBatches(batch):
                hand_step(model, optimiser, part)

    out["hand_loop"] = differenced(hand_loop)[0]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--features", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=30, help="epochs per timed fit in (b)")
    parser.add_argument("--repeats", type=int, default=10, help="timed training steps in (a)")
    parser.add_argument("--quick", action="store_true", help="CI size: 1,000 x 2,000, 20 epochs, 5 steps")
    parser.add_argument("--only", choices=["flops", "epoch"], help="run one of (a), (b)")
    parser.add_argument("--gpu-large", action="store_true", help="(c) 10,000 x 40,000 on a CUDA device")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--clock", choices=["wall", "process"], default="wall", help="process: CPU time (a shared, loaded machine)"
    )
    args = parser.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gpu_large:
        return gpu_large()
    if args.quick:
        args.patients, args.features, args.epochs, args.repeats = 1000, 2000, 20, 5
    print(
        f"cohort {args.patients} patients x {args.features} features, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock"
    )
    if args.only in (None, "flops"):
        for label, settings in (("defaults", {}), ("no dropout", {"dropout": 0.0, "input_dropout": 0.0})):
            flops, step, rate, reference, same_shapes = training_step_ratio(
                args.patients, args.features, repeats=args.repeats, **settings
            )
            print(
                f"(a) training step ({label}): {flops / 1e9:.2f} GFLOP counted, {step * 1e3:.1f} ms, "
                f"{rate / 1e9:.1f} GFLOP/s; torch.matmul 2048^2: {reference / 1e9:.1f} GFLOP/s, "
                f"ratio {rate / reference:.2f} (target >= 0.5); torch.matmul on the step's own product shapes: "
                f"{same_shapes / 1e9:.1f} GFLOP/s, ratio {rate / same_shapes:.2f}"
            )
    if args.only in (None, "epoch"):
        times = epoch_ratio(args.patients, args.features, epochs=args.epochs)
        hand = times["hand_loop"]
        print(
            f"(b) per epoch: hand-written loop {hand * 1e3:.1f} ms; Lightning {times['lightning'] * 1e3:.1f} ms, "
            f"ratio {times['lightning'] / hand:.2f} (target <= 1.15); with CSV curves and per-epoch last "
            f"checkpoint {times['lightning_with_checkpoints'] * 1e3:.1f} ms, ratio "
            f"{times['lightning_with_checkpoints'] / hand:.2f}; fixed per fit (Trainer and loop set-up) "
            f"{times['lightning_fixed'] * 1e3:.0f} ms, {times['lightning_with_checkpoints_fixed'] * 1e3:.0f} ms"
        )
    return 0


def gpu_large() -> int:
    """(c): the 10,000 x 40,000 synthetic cohort on the first CUDA device, 32-true and bf16-mixed."""
    if not torch.cuda.is_available():
        print("--gpu-large needs a CUDA device; none is visible", file=sys.stderr)
        return 2
    n, features = 10_000, 40_000
    print(f"cohort {n} patients x {features} features on {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    for precision in ("32-true", "bf16-mixed"):
        if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            continue
        flops, step, rate, reference, same_shapes = training_step_ratio(
            n, features, repeats=20, device="cuda", precision=precision
        )
        print(
            f"(c) {precision}: {flops / 1e9:.1f} GFLOP per step, {step * 1e3:.2f} ms, {rate / 1e12:.2f} TFLOP/s; "
            f"float32 torch.matmul 2048^2 {reference / 1e12:.2f} TFLOP/s, ratio {rate / reference:.2f}; "
            f"torch.matmul on the step's product shapes {same_shapes / 1e12:.2f} TFLOP/s, "
            f"ratio {rate / same_shapes:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())

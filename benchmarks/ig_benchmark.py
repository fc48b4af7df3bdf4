"""Integrated Gradients for a cohort: the batched path ``explain`` uses against a per-patient loop.

Same model (the fusion model, three modalities), same patients, same steps, in one run: the batched path
attributes every patient in one Captum call with ``internal_batch_size`` (``explain.internal_batch_size``;
default: about 2^24 input floats per internal batch), the reference calls Integrated Gradients once per
patient. Prints both wall times, the ratio (target >= 10x), the largest difference between the two
attributions, and the process's peak resident memory.

    python benchmarks/ig_benchmark.py                      # 1,000 patients x 25,000 features x 50 steps
    python benchmarks/ig_benchmark.py --patients 200 --features 5000 --steps 20   # quicker
    python benchmarks/ig_benchmark.py --batched-only      # the batched path alone: its time and peak memory
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--features", type=int, default=25_000, help="total over the three modalities")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--internal-batch-size", type=int, default=None, help="default: the explain default")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--target", type=float, default=10.0, help="exit 1 when the ratio is below this")
    parser.add_argument(
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="process: CPU time of this process (steadier on a shared machine; use with --threads 1)",
    )
    parser.add_argument(
        "--batched-only", action="store_true", help="time the batched path alone (its memory at full size); no ratio"
    )
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from multimodal.attribution.methods import MethodSettings, attribute_batch, auto_internal_batch_size
    from multimodal.model.fusion import FusionSurvivalModel

    if args.threads:
        torch.set_num_threads(args.threads)
    choice = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    device = torch.device(choice)
    torch.manual_seed(0)
    dims = {
        "expression": int(args.features * 0.8),
        "variants": int(args.features * 0.16),
        "imaging": args.features - int(args.features * 0.8) - int(args.features * 0.16),
    }
    model = FusionSurvivalModel(dims, hidden_dim=16, dropout=0.0, input_dropout=0.0).to(device).eval()
    n = args.patients
    inputs = [torch.randn(n, d, device=device) for d in dims.values()]
    mask = torch.rand(n, len(dims), device=device) > 0.15
    mask[:, 1] = True  # every patient has variant calls
    batch = args.internal_batch_size or auto_internal_batch_size(args.features + len(dims), args.steps)
    settings = MethodSettings(n_steps=args.steps, internal_batch_size=batch)

    clock = time.process_time if args.clock == "process" else time.perf_counter

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    start = clock()
    batched, _ = attribute_batch(model, inputs, mask, settings=settings)
    sync()
    t_batched = clock() - start

    if args.batched_only:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"batched only, {n} x {args.features} x {args.steps} on {device.type}: {t_batched:.2f} s, "
            f"peak RSS {peak_mb:.0f} MB"
        )
        return 0

    start = clock()
    loop = [np.zeros((n, d)) for d in dims.values()]
    single = MethodSettings(n_steps=args.steps, internal_batch_size=args.steps)  # one patient's steps at once
    for i in range(n):
        one, _ = attribute_batch(model, [x[i : i + 1] for x in inputs], mask[i : i + 1], settings=single)
        for j, a in enumerate(one):
            loop[j][i] = a[0]
    sync()
    t_loop = clock() - start

    diff = max(float(np.abs(a - b).max()) for a, b in zip(batched, loop, strict=True))
    ratio = t_loop / t_batched
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"Integrated Gradients, {n} patients x {args.features} features x {args.steps} steps on {device.type} "
        f"({torch.get_num_threads()} threads, {args.clock} clock)"
    )
    print(f"batched (internal_batch_size {batch}): {t_batched:.2f} s")
    print(f"per-patient loop:                    {t_loop:.2f} s")
    print(f"ratio {ratio:.1f}x (target >= {args.target:g}x); max |difference| {diff:.2e}; peak RSS {peak_mb:.0f} MB")
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())

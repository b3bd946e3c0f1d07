"""Cost of the stability tools on one training step of notebook 01's model.

Times, in one process and interleaved (round-robin, so drifts of the machine hit every
variant alike), a full training step (forward, loss, backward, optimizer step, zero-grad)
of ``TinyUNet(attention="cbam")`` on a batch of the shapes data:

- ``bare``: the plain step;
- ``guard``: through ``StabilityGuard`` (one finite check + global-norm clipping);
- ``clip_error``: ``clip_grad_norm_(..., error_if_nonfinite=True)`` (torch's peer);
- ``naive_check``: a Python loop ``torch.isfinite(p.grad).all()`` per parameter, then
  ``clip_grad_norm_`` (what many training loops do);
- ``nan_detector``: the step inside ``NanDetector``;
- ``detect_anomaly``: the step inside ``torch.autograd.detect_anomaly()``.

Prints the median and the minimum time of each and their ratios to ``bare`` (on a shared
machine the minimum is the steadier figure), and the two goals: the guard at
most 3% over the bare step, ``NanDetector``'s overhead at most half of
``detect_anomaly``'s.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_stability.py [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time
import warnings

import torch

from stabletrain.data import make_loaders
from stabletrain.models import TinyUNet
from stabletrain.stability import NanDetector, StabilityGuard, clip_gradients
from stabletrain.utils import seed_everything


def make_variants(model: torch.nn.Module, lr: float):
    def fresh():
        m = copy.deepcopy(model)
        return m, torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)

    loss_fn = torch.nn.BCEWithLogitsLoss()
    variants = {}

    def plain(wrapper=contextlib.nullcontext, clip=None):
        m, opt = fresh()

        def step(x, y):
            with wrapper(m) if wrapper is not contextlib.nullcontext else wrapper():
                loss = loss_fn(m(x), y)
                loss.backward()
            if clip is not None:
                clip(m)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step

    variants["bare"] = plain()

    m_g, opt_g = fresh()
    guard = StabilityGuard(m_g, opt_g, clip_mode="norm", max_norm=1.0)

    def guarded(x, y):
        guard.step(loss_fn(m_g(x), y))

    variants["guard"] = guarded

    def clip_error(m):
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0, error_if_nonfinite=True)

    variants["clip_error"] = plain(clip=clip_error)

    def naive(m):
        for p in m.parameters():
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                raise RuntimeError("non-finite gradient")
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)

    variants["naive_check"] = plain(clip=naive)
    variants["nan_detector"] = plain(wrapper=NanDetector)
    variants["detect_anomaly"] = plain(wrapper=lambda m: torch.autograd.detect_anomaly())
    return variants


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*[Aa]nomaly.*")

    device = torch.device(args.device)
    seed_everything(0)
    train, _ = make_loaders(args.batch_size, 1, args.batch_size, image_size=args.image_size)
    x, y = next(iter(train))
    x, y = x.to(device), y.to(device)
    model = TinyUNet(attention="cbam", base_channels=args.base_channels).to(device)
    variants = make_variants(model, lr=0.01)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in variants}
    for rep in range(args.warmup + args.repeats):
        for name, step in variants.items():
            sync()
            start = time.perf_counter()
            step(x, y)
            sync()
            if rep >= args.warmup:
                times[name].append(time.perf_counter() - start)

    bare = statistics.median(times["bare"])
    print(
        f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'})"
        f" torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch_size} "
        f"image={args.image_size} base_channels={args.base_channels} repeats={args.repeats}"
    )
    best_bare = min(times["bare"])
    print(f"{'variant':<16}{'median ms':>10}{'ratio':>8}{'min ms':>10}{'ratio':>8}")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(
            f"{name:<16}{medians[name] * 1e3:>10.2f}{medians[name] / bare:>8.3f}"
            f"{min(values) * 1e3:>10.2f}{min(values) / best_bare:>8.3f}"
        )
    guard_over = medians["guard"] / bare - 1
    det_over = medians["nan_detector"] / bare - 1
    anomaly_over = medians["detect_anomaly"] / bare - 1
    print(f"guard overhead (medians): {guard_over:+.1%} (goal <= +3%)")
    print(
        f"NanDetector overhead {det_over:+.1%} vs detect_anomaly {anomaly_over:+.1%}: "
        f"ratio {det_over / anomaly_over if anomaly_over > 0 else float('nan'):.2f} (goal <= 0.5)"
    )
    time_components(copy.deepcopy(model), x, y, device)


def time_components(model, x, y, device, rounds: int = 5, inner: int = 100) -> None:
    """The post-backward work alone, on fixed gradients (no noise from the step itself)."""
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
    loss.backward()
    params = [p for p in model.parameters() if p.grad is not None]
    saved = [p.grad.clone() for p in params]

    def restore() -> None:
        for p, g in zip(params, saved):
            p.grad.copy_(g)

    def ours() -> None:  # what the guard does: one fused check + clip, one sync
        clip_gradients(params, "norm", 1.0)

    def torch_clip() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0, error_if_nonfinite=True)
        float(params[0].grad.sum())  # error_if_nonfinite syncs inside; align the end

    def naive() -> None:
        for p in params:
            if not bool(torch.isfinite(p.grad).all()):
                raise RuntimeError("non-finite gradient")
        torch.nn.utils.clip_grad_norm_(params, 1.0)

    variants = {"guard check+clip": ours, "clip_grad_norm_(err)": torch_clip, "naive loop": naive}
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            restore()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) / inner)
    base = min(times["clip_grad_norm_(err)"])
    print(f"post-backward work only ({len(params)} gradients), best of {rounds}x{inner}:")
    for name, values in times.items():
        print(f"  {name:<22}{min(values) * 1e3:>8.3f} ms{min(values) / base:>8.2f}x torch")


if __name__ == "__main__":
    main()

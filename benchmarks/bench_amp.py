"""Training-step time of TinyUNet in float32, bfloat16 and float16, as ratios to float32.

Runs the three precisions interleaved in one process on the available device
(CUDA if present, else CPU) so they see the same machine conditions, and prints
the median step time of each and its speed-up over float32.

    .venv/bin/python benchmarks/bench_amp.py            # GPU: batch 16, 128x128, base 32
    .venv/bin/python benchmarks/bench_amp.py --batch 16 --size 128 --channels 32 --depth 4

On a CPU the defaults are smaller (batch 8, 64x64, base 16, depth 3): CPUs have no
float16 arithmetic, so float16 autocast there is emulated and very slow, and the
realistic size would take minutes per float16 step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from stabletrain.amp import MixedPrecision
from stabletrain.models import TinyUNet


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(dtype: str, args, device: torch.device):
    torch.manual_seed(0)
    model = TinyUNet(base_channels=args.channels, depth=args.depth, attention="cbam").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    amp = MixedPrecision(dtype, device_type=device.type)
    x = torch.randn(args.batch, 1, args.size, args.size, device=device)
    y = (torch.rand(args.batch, 1, args.size, args.size, device=device) > 0.8).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        with amp.autocast():
            out = model(x)
        loss = loss_fn(out.float(), y)
        amp.backward(loss)
        amp.unscale_(opt)
        amp.step(opt)
        opt.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None, help="16 on GPU, 8 on CPU")
    parser.add_argument("--size", type=int, default=None, help="128 on GPU, 64 on CPU")
    parser.add_argument("--channels", type=int, default=None, help="32 on GPU, 16 on CPU")
    parser.add_argument("--depth", type=int, default=None, help="4 on GPU, 3 on CPU")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = (16, 128, 32, 4) if device.type == "cuda" else (8, 64, 16, 3)
    for key, value in zip(("batch", "size", "channels", "depth"), defaults):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {name}; TinyUNet(base {args.channels}, depth {args.depth}, cbam), "
        f"batch {args.batch} at {args.size}x{args.size}"
    )
    steps = {d: make_step(d, args, device) for d in ("float32", "bfloat16", "float16")}
    times: dict[str, list[float]] = {d: [] for d in steps}
    for step in steps.values():  # warm-up (kernel selection, allocator)
        step()
    for _ in range(args.rounds):
        for dtype, step in steps.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(device)
            times[dtype].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["float32"])
    print(f"{'dtype':<10}{'ms/step':>10}{'speed-up vs float32':>22}")
    for dtype, values in times.items():
        t = statistics.median(values)
        print(f"{dtype:<10}{t * 1e3:>10.1f}{base / t:>21.2f}x")


if __name__ == "__main__":
    main()

"""Benchmark: stabletrain.losses beside MONAI (and segmentation_models_pytorch if importable).

Each contender computes its loss and the gradient with respect to the logits
(forward + backward) on ``(16, 4, 128, 128)`` logits; calls are interleaved
(ours, peer, ours, peer, …) in one process so background load hits both
alike. Printed per loss: the fastest CPU time of the process for each (the figure
least disturbed by other jobs on a shared machine, as ``timeit`` advises), the
ratio ours/peer (< 1: ours is faster) on it and on the median CPU and wall
times, the median number of minor page faults per call (fresh memory that the
kernel must map: on a busy machine a large share of the median time), and the
largest absolute difference of the loss value and of the gradient.

Settings are MONAI's defaults plus what makes the two compute the same thing
(the activation, one-hot targets for softmax, focal ``alpha=0.25``); ours run at
their defaults (value checks on; one row shows Dice without them). Our Jaccard
differs from MONAI's ``jaccard=True`` in where the smoothing enters, and our
softmax focal loss averages over pixels where MONAI averages over pixels ×
channels (its value is multiplied by C for the comparison).

Two more peers: ``plain`` is our sigmoid focal loss through plain autograd (its
``reduction="none"`` path, then a mean), against which the hand-written
``torch.autograd.Function`` must stay >= 1.3x faster to be kept; ``base`` (with
``--baseline FILE``) is another version of ``losses.py``, e.g. the previous one, to check
that a change makes no loss slower:

    git show HEAD~1:lib/stabletrain/losses.py > /tmp/losses_before.py
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_losses.py --baseline /tmp/losses_before.py

Runs (``--repeats`` sets the calls per contender):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_losses.py
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_losses.py --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable

try:
    import resource  # Unix only: page-fault counts
except ImportError:  # pragma: no cover - Windows
    resource = None

import torch

from stabletrain import losses
from stabletrain.losses import DiceLoss, FocalLoss

SHAPE = (16, 4, 128, 128)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0


def _time_once(fn: Callable, logits: torch.Tensor, target: torch.Tensor):
    x = logits.clone().requires_grad_()
    faults = _minor_faults()
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(x, target)
    value.backward()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return (cpu, wall, _minor_faults() - faults), value.detach(), x.grad


def _peers():
    """Importable peers, and a line for each that is not."""
    peers, notes = {}, []
    try:
        import monai
        import monai.losses as monai_losses

        peers["monai"] = monai_losses
        notes.append(f"MONAI {monai.__version__}")
    except Exception as exc:  # pragma: no cover - depends on the environment
        notes.append(f"MONAI: could not be imported ({type(exc).__name__}: {exc})")
    try:
        import segmentation_models_pytorch as smp

        peers["smp"] = smp
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        notes.append(
            f"segmentation_models_pytorch: could not be imported ({reason}); its losses were "
            "NOT measured (it needs torchvision, which must match the installed torch)"
        )
    return peers, notes


#: (row, our loss from a losses module, MONAI's loss from ``monai.losses``); softmax rows
#: give MONAI one-hot targets. Settings as described in the module docstring.
LOSSES = [
    ("dice (sigmoid)", lambda m: m.DiceLoss("multilabel"), lambda p: p.DiceLoss(sigmoid=True)),
    (
        "  validate=False",
        lambda m: m.DiceLoss("multilabel", validate=False),
        lambda p: p.DiceLoss(sigmoid=True),
    ),
    (
        "dice (softmax)",
        lambda m: m.DiceLoss("multiclass"),
        lambda p: p.DiceLoss(softmax=True, to_onehot_y=True),
    ),
    (
        "jaccard (sigmoid)",
        lambda m: m.JaccardLoss("multilabel"),
        lambda p: p.DiceLoss(sigmoid=True, jaccard=True),
    ),
    (
        "tversky (sigmoid)",
        lambda m: m.TverskyLoss("multilabel"),
        lambda p: p.TverskyLoss(sigmoid=True),
    ),
    (
        "focal (sigmoid)",
        lambda m: m.FocalLoss("multilabel"),
        lambda p: p.FocalLoss(gamma=2.0, alpha=0.25),
    ),
    (
        "focal (softmax)",
        lambda m: m.FocalLoss("multiclass"),
        lambda p: p.FocalLoss(gamma=2.0, alpha=0.25, use_softmax=True, to_onehot_y=True),
    ),
]


def _plain_focal(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Our sigmoid focal loss through plain autograd (its ``reduction="none"`` path)."""
    return FocalLoss("multilabel", reduction="none")(x, target).mean()


def _load_baseline(path: str):
    """Another version of ``losses.py`` (e.g. ``git show REF:lib/stabletrain/losses.py``)."""
    spec = importlib.util.spec_from_file_location("stabletrain._baseline_losses", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # as a submodule of stabletrain: relative imports work
    return module


def _cases(peers, labels: torch.Tensor, baseline):
    """(name, ours, peer name, peer, peer target transform, peer value scale)."""
    cases = []
    one_hot_target = labels.unsqueeze(1)
    for name, ours, monai_loss in LOSSES:
        multiclass = "softmax" in name
        if "monai" in peers:
            target = one_hot_target if multiclass else None
            scale = SHAPE[1] if multiclass and "focal" in name else 1
            cases.append((name, ours(losses), "monai", monai_loss(peers["monai"]), target, scale))
        if baseline is not None:
            cases.append((name, ours(losses), "base", ours(baseline), None, 1))
        if name == "focal (sigmoid)":  # the fused Function against plain autograd
            cases.append((name, ours(losses), "plain", _plain_focal, None, 1))
    if "smp" in peers:
        s = peers["smp"].losses
        cases += [
            ("dice (sigmoid)", DiceLoss("multilabel"), "smp", s.DiceLoss("multilabel"), None, 1),
            ("focal (sigmoid)", FocalLoss("multilabel"), "smp", s.FocalLoss("multilabel"), None, 1),
        ]
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per contender")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--baseline", metavar="FILE", help="also time another losses.py (peer 'base')"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logits = torch.randn(SHAPE) * 2
    multilabel = (torch.rand(SHAPE) > 0.7).float()
    labels = torch.randint(0, SHAPE[1], (SHAPE[0], *SHAPE[2:]))
    peers, notes = _peers()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), logits {SHAPE},")
    print(f"forward + backward, {args.repeats} interleaved calls each")
    for note in notes:
        print(note)
    print()
    header = (
        f"{'loss':<19}{'peer':<6}{'ours ms':>8}{'peer ms':>8}{'ratio':>7}{'median':>8}"
        f"{'wall':>7}{'faults':>12}{'Δvalue':>9}{'Δgrad':>9}"
    )
    print(header)
    print("-" * len(header))
    baseline = _load_baseline(args.baseline) if args.baseline else None
    for name, ours, peer_name, peer, peer_target, scale in _cases(peers, labels, baseline):
        our_target = labels if ours.mode == "multiclass" else multilabel
        their_target = peer_target if peer_target is not None else our_target
        for _ in range(3):  # warm-up
            _time_once(ours, logits, our_target)
            _time_once(peer, logits, their_target)
        ours_t, peer_t = [], []
        for i in range(args.repeats):
            order = ((ours, our_target, ours_t), (peer, their_target, peer_t))
            for fn, target, sink in order if i % 2 == 0 else order[::-1]:
                sink.append(_time_once(fn, logits, target)[0])
        _, v_ours, g_ours = _time_once(ours, logits, our_target)
        _, v_peer, g_peer = _time_once(peer, logits, their_target)
        dv = abs(float(v_ours) - scale * float(v_peer))
        dg = float((g_ours - scale * g_peer).abs().max())
        mo, mp = (min(t[0] for t in ts) * 1e3 for ts in (ours_t, peer_t))
        so, sp = (statistics.median(t[0] for t in ts) for ts in (ours_t, peer_t))
        wo, wp = (statistics.median(t[1] for t in ts) for ts in (ours_t, peer_t))
        fo, fp = (round(statistics.median(t[2] for t in ts)) for ts in (ours_t, peer_t))
        print(
            f"{name:<19}{peer_name:<6}{mo:>8.2f}{mp:>8.2f}{mo / mp:>7.2f}{so / sp:>8.2f}"
            f"{wo / wp:>7.2f}{f'{fo}/{fp}':>12}{dv:>9.1e}{dg:>9.1e}"
        )
    print()
    print("ms: fastest CPU time of the process per call (the least disturbed by other jobs);")
    print("ratio: ours / peer on those (< 1: ours is faster); median: the same on median CPU")
    print("time; wall: on median wall time; faults: median minor page faults per call,")
    print("ours/peer (4 KiB pages; one (16, 4, 128, 128) float32 tensor is 1024 of them).")


if __name__ == "__main__":
    main()

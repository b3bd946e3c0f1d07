"""stabletrain: keep PyTorch training stable.

The library behind the notebook course. One concept per module:

- :mod:`stabletrain.models` — ``TinyUNet`` with optional SE/CBAM attention and safeguards,
  a choice of normalisation and activation, and bottleneck self-attention.
- :mod:`stabletrain.data` — the synthetic ``ShapesSegmentation`` data set and loaders.
- :mod:`stabletrain.metrics` — Dice and IoU scores, accuracy.
- :mod:`stabletrain.loop` — ``fit`` and ``evaluate``: a short loop of events, for any model.
- :mod:`stabletrain.update` — ``Update``: the whole optimizer step, reported as a ``StepResult``.
- :mod:`stabletrain.callbacks` — ``Callback`` and the built-in ones (``EarlyStopping``,
  checkpointing, tracking, progress, ...).
- :mod:`stabletrain.history` — ``History``: what a run recorded.
- :mod:`stabletrain.stability` — finite checks, clipping, ``NanDetector``, and
  ``StabilityGuard`` (an ``Update`` with a NaN policy).
- :mod:`stabletrain.schedulers` — LR schedulers (real ``LRScheduler``\\ s) and ``build_scheduler``.
- :mod:`stabletrain.lr_finder` — the LR range test and its moving average ``ema``.
- :mod:`stabletrain.losses` — Dice, Jaccard, Tversky, focal and combined losses.
- :mod:`stabletrain.loss_weights` — scheduling the weights of a combined loss.
- :mod:`stabletrain.deep_supervision` — weight schedules and ``DeepSupervisionLoss``.
- :mod:`stabletrain.amp` — ``MixedPrecision`` that reports skipped steps.
- :mod:`stabletrain.checkpoint` — crash-safe checkpoints and bit-exact resume.
- :mod:`stabletrain.tracking` — MLflow tracking (needs the ``tracking`` extra).
- :mod:`stabletrain.optim` — ``build_optimizer`` with seed and torch keys, parameter groups.
- :mod:`stabletrain.config` — presets and ``build_training``: one configuration builds everything.
- :mod:`stabletrain.cli` — ``python -m stabletrain train | compare-schedulers``.
- :mod:`stabletrain.widgets` — notebook widgets (needs the ``widgets`` extra; import it directly).
- :mod:`stabletrain.plotting` (``plot_lr``), :mod:`stabletrain.experiments`,
  :mod:`stabletrain.utils`.

:mod:`stabletrain.course` holds what only the notebooks need, one module per topic:
``plots`` (loss curves, loss scale, prediction grids), ``precision`` (float formats,
activation ranges, layer gradients, underflow), ``runs`` (MLflow runs read back),
``supervision`` (deep-supervision weight curves), ``batchnorm``, ``divergence``.
"""

from .amp import MixedPrecision
from .callbacks import Callback, EarlyStopping, TrainContext
from .checkpoint import CheckpointError, CheckpointManager, UnsafeCheckpointError
from .config import PRESETS, Training, build_training, resolve_config, run
from .data import ShapesSegmentation, make_loaders
from .deep_supervision import DeepSupervisionLoss, supervision_weights
from .history import History
from .loop import evaluate, fit
from .loss_weights import LossWeightCallback, LossWeightScheduler
from .losses import CombinedLoss, DiceLoss, FocalLoss, JaccardLoss, TverskyLoss, build_loss
from .lr_finder import LRRangeTestResult, lr_range_test
from .metrics import accuracy, dice_score, iou_score
from .models import SAFE_ATTENTION, CBAMBlock, SEBlock, SpatialSelfAttention, TinyUNet
from .optim import build_optimizer
from .schedulers import SCHEDULER_TYPES, build_scheduler, epochs_to_steps, lr_curve, with_warmup
from .stability import (
    NanDetector,
    NonFiniteError,
    StabilityGuard,
    check_gradients,
    check_weights,
    clip_gradients,
    grad_norm,
    grads_are_finite,
)
from .tracking import MLflowTracker
from .update import StepResult, Update
from .utils import get_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SAFE_ATTENTION",
    "SCHEDULER_TYPES",
    "CBAMBlock",
    "Callback",
    "CheckpointError",
    "CheckpointManager",
    "CombinedLoss",
    "DeepSupervisionLoss",
    "DiceLoss",
    "EarlyStopping",
    "FocalLoss",
    "History",
    "JaccardLoss",
    "LRRangeTestResult",
    "LossWeightCallback",
    "LossWeightScheduler",
    "MLflowTracker",
    "MixedPrecision",
    "NanDetector",
    "NonFiniteError",
    "SEBlock",
    "ShapesSegmentation",
    "SpatialSelfAttention",
    "StabilityGuard",
    "StepResult",
    "TinyUNet",
    "TrainContext",
    "Training",
    "TverskyLoss",
    "UnsafeCheckpointError",
    "Update",
    "accuracy",
    "build_loss",
    "build_optimizer",
    "build_scheduler",
    "build_training",
    "check_gradients",
    "check_weights",
    "clip_gradients",
    "dice_score",
    "epochs_to_steps",
    "evaluate",
    "fit",
    "get_device",
    "grad_norm",
    "grads_are_finite",
    "iou_score",
    "lr_curve",
    "lr_range_test",
    "make_loaders",
    "resolve_config",
    "run",
    "seed_everything",
    "supervision_weights",
    "with_warmup",
]

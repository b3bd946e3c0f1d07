"""stabletrain: keep PyTorch training stable — the library behind the notebook course. One concept
per module; the core is ``loop`` (``fit``, ``evaluate``), ``update`` and ``callbacks``.
:mod:`stabletrain.widgets` needs the ``widgets`` extra; :mod:`stabletrain.course` holds what only
the notebooks need. The names imported here are the public API."""

from .amp import MixedPrecision
from .callbacks import Callback, EarlyStopping, TrainContext
from .checkpoint import CheckpointError, CheckpointManager, UnsafeCheckpointError
from .config import PRESETS, Training, build_training, resolve_config, run
from .data import ShapesSegmentation, make_loaders
from .deep_supervision import DeepSupervisionLoss, supervision_weights
from .distributed import scale_lr
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

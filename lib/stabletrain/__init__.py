"""stabletrain: keep PyTorch training stable.

The library behind the notebook course. One concept per module:

- :mod:`stabletrain.models` — ``TinyUNet`` with optional SE/CBAM attention.
- :mod:`stabletrain.data` — the synthetic ``ShapesSegmentation`` data set and loaders.
- :mod:`stabletrain.metrics` — Dice and IoU scores.
- :mod:`stabletrain.training` — ``fit``, ``History`` and the extension protocols.
- :mod:`stabletrain.plotting` — loss/LR curves and prediction grids.
- :mod:`stabletrain.utils` — ``seed_everything`` and ``get_device``.
"""

from .data import ShapesSegmentation, make_loaders
from .metrics import dice_score, iou_score
from .models import CBAMBlock, SEBlock, TinyUNet
from .training import Callback, History, StepResult, evaluate, fit
from .utils import get_device, seed_everything

__version__ = "0.1.0"

__all__ = [
    "CBAMBlock",
    "Callback",
    "History",
    "SEBlock",
    "ShapesSegmentation",
    "StepResult",
    "TinyUNet",
    "dice_score",
    "evaluate",
    "fit",
    "get_device",
    "iou_score",
    "make_loaders",
    "seed_everything",
]

"""The names that lived here before the loop was split up (kept so that old imports work).

The loop is :mod:`stabletrain.loop`, the update :mod:`stabletrain.update`, the hooks
:mod:`stabletrain.callbacks` and the records :mod:`stabletrain.history`.
"""

from .callbacks import Callback, EarlyStopping, TrainContext
from .history import History
from .loop import evaluate, fit, outputs_to_float32
from .schedulers import is_metric_driven
from .update import StepResult, Update, steps_per_update

PlainUpdate = Update  #: the plain update's former name

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "PlainUpdate",
    "StepResult",
    "TrainContext",
    "Update",
    "evaluate",
    "fit",
    "is_metric_driven",
    "outputs_to_float32",
    "steps_per_update",
]

import warnings

from .course.experiments import *  # noqa: F403

warnings.warn("import stabletrain.course.experiments instead", DeprecationWarning, stacklevel=2)

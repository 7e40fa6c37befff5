"""Auto-checks for the notebooks' exercises: `tlc.exercises.check_<name>(answer)`.

One module per notebook; every check prints feedback and returns a bool, never raises.
"""

from .common import NOT_ATTEMPTED, attempted, feedback, safely
from .nb01 import (
    check_accuracy_fn,
    check_best_regulariser,
    check_derivative,
    check_mlp_parameters,
)
from .nb02 import *  # noqa: F403  (each module lists its checks in __all__)
from .nb03 import *  # noqa: F403
from .nb04 import *  # noqa: F403
from .nb05 import *  # noqa: F403
from .nb06 import *  # noqa: F403
from .nb07 import *  # noqa: F403
from .nb08 import *  # noqa: F403
from .nb09 import *  # noqa: F403

__all__ = [
    "NOT_ATTEMPTED", "attempted", "feedback", "safely",
    "check_accuracy_fn", "check_best_regulariser", "check_derivative", "check_mlp_parameters",
]

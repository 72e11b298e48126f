"""torch_gd: PyTorch-native gradient-descent optimizers, drop-in replacements for torch.optim."""

from . import lr_scheduler, schedules
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .param_groups import make_param_groups
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = [
    "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "lr_scheduler", "make_param_groups", "schedules",
]
__version__ = "0.1.0"

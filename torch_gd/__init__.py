"""torch_gd: PyTorch-native gradient-descent optimizers, drop-in replacements for torch.optim."""

from . import lr_scheduler, schedules
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "lr_scheduler", "schedules"]
__version__ = "0.1.0"

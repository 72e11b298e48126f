"""torch_gd: PyTorch-native gradient-descent optimizers, drop-in replacements for torch.optim."""

from .adagrad import Adagrad
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

__all__ = ["Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "SGD"]
__version__ = "0.1.0"

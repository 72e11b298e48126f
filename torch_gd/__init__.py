"""torch_gd: PyTorch-native gradient-descent optimizers, drop-in replacements for torch.optim."""

from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Adam", "AdamW", "Optimizer", "SGD"]
__version__ = "0.1.0"

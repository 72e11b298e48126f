"""``python -m torch_gd.benchmark``; the options are in cli.py."""

from .cli import main

main()

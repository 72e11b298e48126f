"""The benchmark harness, ``python -m torch_gd.benchmark`` (``cli.main``).

- ``sets``: parameter sets (torchvision models, GPT-2 small, NxM, a user's import path);
- ``optimizers``: the optimizers and implementations compared, and bytes a step moves;
- ``timing``: timers behind one interface, wall clock on the CPU and CUDA events on CUDA;
- ``measure``: interleaved step timing and the triad bandwidth;
- ``isolated``: peak memory and cold first step, each in a fresh process;
- ``run``: one run's rows, ratios against torch and bandwidth fractions;
- ``report``: terminal table, JSON, CSV and PNG; ``progress``: a bar over the cases.
"""

"""The benchmark harness, ``python -m torch_gd.benchmark`` (``cli.main``).

- ``sets``: named parameter sets (torchvision models, GPT-2 small, small models, NxM, a user's
  import path);
- ``groups``: param-group layouts (one, two, block, tensor) every implementation is built with;
- ``optimizers``: the optimizers and implementations compared, and bytes a step moves;
- ``timing``: timers behind one interface, wall clock on the CPU and CUDA events on CUDA;
- ``measure``: interleaved step timing and the triad bandwidth;
- ``isolated``: peak memory and cold first step, each in a fresh process;
- ``run``: one run's rows, ratios against torch and bandwidth fractions;
- ``report``: terminal table, JSON, CSV and PNG; ``progress``: a bar over the cases.
"""

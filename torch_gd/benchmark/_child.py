"""One isolated measurement in a fresh process (see isolated.py):
``python -m torch_gd.benchmark._child TASK CASE_JSON`` prints its result as one JSON line."""

import json
import sys

from .isolated import TASKS

print(json.dumps(TASKS[sys.argv[1]](json.loads(sys.argv[2]))))

"""Settings every test run uses, so that plain ``pytest`` and ``make test`` are the same run.

Loaded by pytest before any test module or notebook kernel starts (the kernels inherit the environment):
tests never reach the model hub, no progress bar ends up in a notebook's output, and every int4-onnx graph is
built afresh (the tests that keep graphs on disk give their own folder).
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["KOSMOS2_PROGRESS"] = "0"
os.environ["KOSMOS2_ONNX_CACHE"] = "off"

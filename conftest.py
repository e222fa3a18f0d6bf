"""Settings every test run uses, so that plain ``pytest`` and ``make test`` are the same run.

Loaded by pytest before any test module or notebook kernel starts (the kernels inherit the environment):
tests never reach the model hub, no progress bar ends up in a notebook's output, and every int4-onnx graph is
built afresh (the tests that keep graphs on disk give their own folder). Every process the tests start writes its
temporary files in a folder of the session's own, removed at its end.
"""

import os
import shutil
import tempfile

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["KOSMOS2_PROGRESS"] = "0"
os.environ["KOSMOS2_ONNX_CACHE"] = "off"

_SCRATCH = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers, which then share the folder
def pytest_sessionstart(session: pytest.Session) -> None:
    """Point the temporary folder of every process the tests start (notebook kernels, commands, ``accelerate
    launch``, Chromium) at a new folder, removed when the session ends. nbval stops each kernel at once, which
    skips the removal of a notebook's ``TemporaryDirectory``, so such folders used to pile up in the system's.
    The name stays short: Chromium keeps a socket in it, and a socket's path may not pass 107 characters."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker: the folder of the session that started it
        return
    tempfile.gettempdir()  # this process keeps the system's folder, where pytest keeps each test's own
    folder = tempfile.mkdtemp(prefix="k2-tests-")
    session.config.stash[_SCRATCH] = folder
    os.environ["TMPDIR"] = folder


def pytest_sessionfinish(session: pytest.Session) -> None:
    folder = session.config.stash.get(_SCRATCH, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)

"""Shared fixtures: a tiny random-weight Kosmos-2 saved as a model folder, built once per test session; and a
temporary folder of the session's own for every process the tests start."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a tiny Kosmos-2 of the world's architecture (random weights, safetensors) and its
    processor, both written with ``save_pretrained``: what ``helpers.grounding.model.load(path)`` expects."""
    from helpers.world.training import new_model
    from helpers.world.language import build_processor

    folder = tmp_path_factory.mktemp("tiny_kosmos2")
    processor = build_processor(64)
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=32, heads=2)
    model.save_pretrained(folder)  # transformers 5 always writes model.safetensors
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path):
    """``(model, processor)`` loaded from :func:`tiny_model_dir` through ``helpers.grounding.model.load``."""
    import helpers.grounding.model

    return helpers.grounding.model.load(str(tiny_model_dir), verbose=False)

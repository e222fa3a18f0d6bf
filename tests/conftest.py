"""Shared fixtures: a tiny random-weight Kosmos-2 saved as a model folder, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


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

"""helpers.grounding.progress.interactive: when progress bars are shown."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers.grounding.progress import interactive


@pytest.mark.parametrize("flag", ["0", "false", "False", "FALSE", "no", "No", "off", "OFF", " Off "])
def test_kosmos2_progress_turns_bars_off_in_any_case(monkeypatch, flag: str) -> None:
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # where bars would be on otherwise
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("KOSMOS2_PROGRESS", flag)
    assert interactive() is False


@pytest.mark.parametrize("flag", ["1", "true", "True", "YES", "on", "On"])
def test_kosmos2_progress_turns_bars_on_in_any_case(monkeypatch, flag: str) -> None:
    monkeypatch.setenv("CI", "1")  # where bars would be off otherwise
    monkeypatch.setenv("KOSMOS2_PROGRESS", flag)
    assert interactive() is True


def test_without_the_flag_ci_turns_bars_off(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ipykernel", sys)
    monkeypatch.delenv("KOSMOS2_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert interactive() is False


@pytest.mark.parametrize(("value", "flag"), [
    *[(v, True) for v in ("1", "true", "Yes", " ON ")],
    *[(v, False) for v in ("0", "FALSE", "no", " Off")],
    *[(v, None) for v in ("", "  ", "2", "maybe", "/some/folder")],
])
def test_each_environment_flag_is_read_by_the_one_rule(monkeypatch, value: str, flag: bool | None) -> None:
    """env_flag reads KOSMOS2_PROGRESS, HF_HUB_OFFLINE and KOSMOS2_ONNX_CACHE alike; each keeps its meaning."""
    from helpers.grounding import model, onnx_decoder
    from helpers.grounding.progress import env_flag

    monkeypatch.setenv("KOSMOS2_TEST_FLAG", value)
    assert env_flag("KOSMOS2_TEST_FLAG") is flag
    monkeypatch.delenv("KOSMOS2_TEST_FLAG")
    assert env_flag("KOSMOS2_TEST_FLAG") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert model._offline() is (flag is True)  # on only when set on
    monkeypatch.setenv("KOSMOS2_ONNX_CACHE", value)
    if flag is False:
        assert onnx_decoder.cache_dir() is None
    elif value.strip():  # any other value names the folder
        assert onnx_decoder.cache_dir() == Path(value.strip())
    monkeypatch.setenv("CI", "1")
    monkeypatch.setenv("KOSMOS2_PROGRESS", value)
    assert interactive() is (flag is True)  # unset or unknown: CI decides (off)

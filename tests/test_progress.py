"""helpers.grounding.progress.interactive: when progress bars are shown."""

from __future__ import annotations

import sys

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

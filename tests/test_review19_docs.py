"""What the help, the messages and the docstrings say matches what the code does: ``finetune --out`` with
``--resume``, the names a resume mismatch gives, ``attach_adapter``'s parameters, the reading of ``CI`` and the
docstrings of the names ``helpers`` exports."""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
from pathlib import Path

import pytest

import helpers
from helpers.grounding.finetune import (OPTIMIZER_FILE, FinetuneConfig, FinetuneError, attach_adapter, build_parser,
                                        check_output)
from helpers.grounding.progress import interactive


def test_finetune_out_help_says_that_resume_takes_the_saved_run(tmp_path):
    """--out's help said "must be new or empty", while --resume needs it to hold the saved run."""
    (out_help,) = [a.help for a in build_parser()._actions if "--out" in a.option_strings]
    assert "new or empty" in out_help and "--resume" in out_help
    with pytest.raises(FinetuneError, match="holds no saved run"):  # what the help says --resume needs
        check_output(tmp_path, resume=True)


def _saved_run(folder: Path, cfg: FinetuneConfig) -> Path:
    """A folder that looks like a saved run of ``cfg`` to :func:`check_output`."""
    folder.mkdir()
    (folder / OPTIMIZER_FILE).write_bytes(b"")
    (folder / "finetune.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "steps": 1}))
    return folder


def test_a_resume_with_other_adapters_names_only_real_options(tmp_path):
    """The message named dropout "dropout", as if it were an option; the command line has no --dropout."""
    out = _saved_run(tmp_path / "run", FinetuneConfig(steps=1))
    changed = FinetuneConfig(steps=20, rank=8, alpha=4, dropout=0.1, vision=True, new_words=("star",))
    with pytest.raises(FinetuneError, match="with other adapters") as info:
        check_output(out, resume=True, cfg=changed)
    message = str(info.value)
    parts = message[message.index("other adapters: ") + len("other adapters: "):message.index(". Give")].split("; ")
    options = {o: a.dest for a in build_parser()._actions for o in a.option_strings}
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    named = set()
    for part in parts:
        name = part.split()[0]
        if name.startswith("-"):
            assert name in options, part
            named.add(options[name])
        else:  # a setting with no option: named as the FinetuneConfig field it is
            owner, _, field = name.partition(".")
            assert owner == "FinetuneConfig" and field in fields and field not in options.values(), part
            named.add(field)
    assert named == {"rank", "alpha", "dropout", "vision", "new_words"}


def test_attach_adapter_has_no_trainable_switch():
    """attach_adapter(trainable=) was never used: a resumed run attaches its trainable adapters itself."""
    with pytest.raises(TypeError, match="trainable"):
        attach_adapter(None, "no-such-adapter", trainable=True)


@pytest.mark.parametrize(("ci", "bars"), [
    *[(v, True) for v in ("false", "0", "No", " OFF ", "", "  ")],  # no CI run: bars as without CI
    *[(v, False) for v in ("true", "1", "yes", "woodpecker")],  # CI services set true, 1 or their name
])
def test_ci_is_read_by_the_one_reading_of_on_off_variables(monkeypatch, ci: str, bars: bool) -> None:
    """Any non-empty CI turned bars off, CI=false too, while env_flag reads false as off."""
    monkeypatch.setitem(sys.modules, "ipykernel", sys)  # where bars would be on otherwise
    monkeypatch.delenv("KOSMOS2_PROGRESS", raising=False)
    monkeypatch.setenv("CI", ci)
    assert interactive() is bars


def test_every_exported_function_and_class_has_a_docstring_of_its_own():
    """help() showed nothing for box_hits, phrases_match and new_model, and only the generated signature for the
    dataclasses TrainConfig, FinetuneConfig and CaptionScores."""
    missing = []
    for name in helpers.__all__:
        value = getattr(helpers, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
            generated = dataclasses.is_dataclass(value) and (doc or "").startswith(f"{name}(")
            if not (doc or "").strip() or generated:
                missing.append(name)
    assert missing == []

"""The cards (the world model's ``README.md``, the adapters' ``README.md``) hold non-ASCII text ("—", "–",
"≥"): they are written as UTF-8 whatever the locale's encoding, so ``modelcard``, ``train`` and ``finetune --val``
no longer crash at their last write under a C locale (or Windows' cp1252, which has no "≥")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

#: A process whose text files default to ASCII: the C locale, with Python's UTF-8 mode and locale coercion off
#: (its standard streams stay UTF-8: what `modelcard` prints is the terminal's matter, not the card's).
ASCII_ENV = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "utf-8",
             "KOSMOS2_PROGRESS": "0", "HF_HUB_OFFLINE": "1"}

SCRIPT = textwrap.dedent("""
    import locale, sys
    from pathlib import Path

    from helpers.__main__ import main
    from helpers.grounding.finetune import FinetuneConfig, add_figures, finetune, read_coco
    from helpers.world.new_kinds import write_coco

    print(locale.getpreferredencoding(False))
    model_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
    assert main(["modelcard", str(model_dir), "--scenes", "1"]) == 0
    assert main(["modelcard", str(model_dir), "--render-only"]) == 0
    data = write_coco(work / "data", 2, 7, "train")
    records = read_coco(data, work / "data" / "images")
    out = work / "adapters"
    finetune(model_dir, records, out, FinetuneConfig(steps=1, batch_size=2, device="cpu"), progress=False,
             log=lambda _: None)
    score = {"rate": 0.5, "hits": 1, "total": 2}
    add_figures(out, {"stars": {"before": score, "after": score}})
""")


def test_cards_are_written_as_utf8_under_an_ascii_locale(tiny_model_dir, tmp_path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    env = {**os.environ, **ASCII_ENV}
    env.pop("LC_CTYPE", None)
    proc = subprocess.run([sys.executable, "-X", "utf8=0", "-c", SCRIPT, str(model_dir), str(tmp_path)], env=env,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "utf" not in proc.stdout.splitlines()[0].lower()  # the process's default text encoding was not UTF-8
    card = (model_dir / "README.md").read_text(encoding="utf-8")
    assert "≥" in card and "—" in card
    adapter_card = (tmp_path / "adapters" / "README.md").read_text(encoding="utf-8")
    assert "steps 0–1" in adapter_card and "IoU ≥ 0.5" in adapter_card

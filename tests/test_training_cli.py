"""``python -m helpers train`` checks every option before it builds, loads, trains or writes anything: bad
input ends in one ``python -m helpers train: error: …`` line and exit status 2 (a run to resume that cannot
load: 1), never in a traceback after minutes of work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import helpers.world.training as training
from helpers.__main__ import main as helpers_main
from helpers.world.training import TrainConfig, check_config

PREFIX = "python -m helpers train: error: "


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the command trains, builds a model or loads one."""
    import transformers

    def refuse(*_args, **_kwargs):
        pytest.fail("the command started work although its options were bad")

    monkeypatch.setattr(training, "train", refuse)
    monkeypatch.setattr(training, "new_model", refuse)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.Kosmos2ForConditionalGeneration, "from_pretrained", refuse)


def _run(tmp_path, capsys, extra: list[str], out: str = "out") -> str:
    """Run the command in ``tmp_path``; assert exit 2, one error line last, nothing written; return stderr."""
    before = sorted(os.listdir(tmp_path))
    code = helpers_main(["train", "--out", str(tmp_path / out), "--no-evaluate", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.splitlines()[-1].startswith(PREFIX), err
    assert sorted(os.listdir(tmp_path)) == before, "the command wrote something"
    return err.splitlines()[-1]


@pytest.mark.parametrize("extra, message", [
    (["--steps", "-3", "--vision-steps", "-1"], "argument --steps"),
    (["--steps", "-3"], "argument --steps: must be at least 1, got -3"),
    (["--steps", "0"], "argument --steps"),
    (["--vision-steps", "-1"], "argument --vision-steps: must be at least 0, got -1"),
    (["--heads-steps", "1.5"], "argument --heads-steps"),
    (["--batch-size", "0"], "argument --batch-size"),
    (["--warmup", "-1"], "argument --warmup"),
    (["--minutes", "0"], "argument --minutes: must be a number above 0"),
    (["--minutes", "inf"], "argument --minutes"),
    (["--lr", "nan"], "argument --lr"),
    (["--threads", "-1"], "argument --threads"),
    (["--threads", "0"], "argument --threads"),
    (["--workers", "-1"], "argument --workers"),
    (["--log-every", "0"], "argument --log-every"),
    (["--pair-share", "2"], "argument --pair-share: must be a share from 0 to 1"),
    (["--three-share", "-0.1"], "argument --three-share"),
    (["--fp4-share", "1.5"], "argument --fp4-share"),
    (["--aux-weight", "-1"], "argument --aux-weight: must be a number of at least 0"),
    (["--count-weight", "inf"], "argument --count-weight"),
    (["--checkpoint-minutes", "-5"], "argument --checkpoint-minutes"),
    (["--task-weights", "caption=inf"], "the weight of 'caption' must be a number >= 0"),
    # the options as typed (it used to say fp4_share and nf4_share, the Python names)
    (["--fp4-share", "0.6", "--nf4-share", "0.6"], PREFIX + "--fp4-share and --nf4-share must be 0 or more and add up "
                                                   "to at most 1, got 0.6 and 0.6"),
    (["--device", "tpu7"], PREFIX + "argument --device: device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu7'"),
])
def test_bad_options_stop_before_any_work(tmp_path, capsys, no_work, extra, message) -> None:
    assert message in _run(tmp_path, capsys, extra)


def test_an_output_folder_that_is_a_file_stops_before_training(tmp_path, capsys, no_work) -> None:
    """It used to fail only when saving, after the whole run."""
    (tmp_path / "model").write_text("mine")
    line = _run(tmp_path, capsys, [], out="model")
    assert "--out" in line and "is a file" in line
    (tmp_path / "parent").write_text("mine")
    assert "is a file" in _run(tmp_path, capsys, [], out="parent/model")
    assert (tmp_path / "model").read_text() == "mine"


def test_a_checkpoint_folder_that_is_a_file_stops_before_training(tmp_path, capsys, no_work) -> None:
    (tmp_path / "ckpt").write_text("mine")
    line = _run(tmp_path, capsys, ["--checkpoint", str(tmp_path / "ckpt")])
    assert "--checkpoint" in line and "is a file" in line


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "run.txt", (d / "run.txt").write_text(""))[0], "is not a folder"),
    (lambda d: d / "missing", "does not exist"),
    (lambda d: (d / "empty", (d / "empty").mkdir())[0], "holds no saved model (no config.json)"),
])
def test_a_run_to_resume_must_be_a_saved_model_folder(tmp_path, capsys, no_work, make, message) -> None:
    resume = make(tmp_path)
    line = _run(tmp_path, capsys, ["--resume", str(resume)])
    assert "--resume" in line and message in line


def test_a_saved_run_that_cannot_load_exits_1(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained without a model"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code = helpers_main(["train", "--out", str(tmp_path / "out"), "--resume", str(broken), "--no-evaluate"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and err.splitlines()[-1].startswith(PREFIX + "cannot load the run to resume")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("record, message", [
    (b"{not json", "is not valid JSON: Expecting property name"),
    (b" \n", "is empty"),
    (b"\x89PNG\r\n", "is not UTF-8 JSON text (byte 0 is not UTF-8)"),
    (b"[]", ": it holds a JSON list, not an object"),
    (b'{"stages": [5]}', ": its runs (the record itself, or each of its 'stages') are not objects"),
])
def test_a_broken_training_record_to_resume_is_named_before_the_model_loads(tmp_path, capsys, no_work, record,
                                                                             message) -> None:
    """A training.json that was not JSON ended in "JSONDecodeError: Expecting value …" without naming the file, and
    one of another shape (a list) was taken and crashed the run when it wrote its own record, after training."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / training.RECORD_FILE).write_bytes(record)
    code = helpers_main(["train", "--out", str(tmp_path / "out"), "--resume", str(run), "--no-evaluate"])
    line = capsys.readouterr().err.splitlines()[-1]
    assert code == 1, line
    assert line.startswith(f"{PREFIX}cannot load the run to resume from {str(run)!r}: ValueError: training record "
                           f"{str(run / 'training.json')!r}")
    assert message in line and line.endswith("; expected the record of the run as `python -m helpers train --out DIR` "
                                             "writes it (or no training.json at all)")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def gpu(monkeypatch):
    """``gpu((7, 5))``: torch sees one CUDA GPU of that compute capability (without one being there). Like a real
    T4, it says that it supports bfloat16: ``torch.cuda.is_bf16_supported()`` counts emulation."""
    import torch

    def make(capability: tuple[int, int], name: str = "Tesla T4") -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: including_emulation or capability >= (8, 0))
        monkeypatch.setattr(torch.version, "hip", None)

    return make


def test_bf16_is_refused_on_a_gpu_that_only_emulates_it(tmp_path, capsys, no_work, gpu) -> None:
    """A T4 (compute capability 7.5) would train in slowly emulated bfloat16: refused before any work, with
    the GPU's compute capability and what to do instead."""
    gpu((7, 5))
    message = ("--bf16 (bf16=True): the GPU Tesla T4 (cuda) has compute capability 7.5, without native bfloat16 "
               "arithmetic (that needs 8.0 or newer), so bfloat16 would only be emulated, slowly; leave out --bf16")
    assert message in _run(tmp_path, capsys, ["--device", "cuda", "--bf16"])
    with pytest.raises(ValueError, match=r"Tesla T4 \(cuda:0\) has compute capability 7\.5"):
        check_config(TrainConfig(device="cuda:0", bf16=True))
    check_config(TrainConfig(device="cuda"))  # float32 on it is fine
    check_config(TrainConfig(device="cpu", bf16=True))  # CPUs are not refused (AMX, AVX-512 BF16)
    gpu((8, 0), "NVIDIA A100")
    check_config(TrainConfig(device="cuda", bf16=True))


def test_the_device_is_checked_by_the_rule_of_load_before_anything_is_built(tmp_path, capsys, no_work, gpu,
                                                                             monkeypatch) -> None:
    """train checked --device with a copy of its own that knew neither MPS nor a GPU's index: --device mps on a
    machine without MPS built the processor and the model, then failed with a traceback; --device cuda:3 on a
    machine with one GPU got through. Both now read as finetune --device does (model.check_device's rule)."""
    import torch

    from helpers.grounding.model import check_device

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    gpu((8, 0), "NVIDIA A100")  # one GPU: cuda:0
    for device in ("mps", "cuda:3"):
        with pytest.raises(ValueError) as rule:
            check_device(device)
        line = _run(tmp_path, capsys, ["--device", device])
        expected = str(rule.value).replace("leave device unset", "leave out --device")
        assert line == PREFIX + "argument --device: " + expected
    assert "needs Apple's MPS backend" in _run(tmp_path, capsys, ["--device", "mps"])
    assert "'cuda:3' does not exist: torch sees 1 CUDA GPU(s)" in _run(tmp_path, capsys, ["--device", "cuda:3"])


def test_native_bfloat16_is_one_rule_for_training_and_loading(gpu) -> None:
    """Native bfloat16 from compute capability 8.0 (Ampere); what load() picks by default follows it."""
    import torch

    from helpers.grounding.model import default_dtype, native_bf16

    assert native_bf16("cpu") is False
    for capability, native in (((7, 5), False), ((7, 0), False), ((8, 0), True), ((9, 0), True)):
        gpu(capability)
        assert native_bf16("cuda") is native and native_bf16("cuda:0") is native
        assert default_dtype("cuda") == (torch.bfloat16 if native else torch.float16)


@pytest.mark.parametrize("changes, message", [
    ({"minutes": 0}, "minutes must be a number above 0"),
    ({"warmup": -1}, "warmup must be 0 or more"),
    ({"steps": -3}, "steps must be 0 or more"),
    ({"vision_steps": 1.5}, "vision_steps must be 0 or more"),
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"lr": 0.0}, "lr must be a number above 0"),
    ({"pair_share": 2.0}, "pair_share must be a share from 0 to 1"),
    ({"aux_weight": float("nan")}, "aux_weight must be a number of at least 0"),
    ({"checkpoint_minutes": -1.0}, "checkpoint_minutes must be a number of at least 0"),
    ({"task_weights": {"caption": float("inf")}}, "task_weights"),
    ({"workers": -1}, "workers must be 0 or more"),
    ({"fp4_share": 0.6, "nf4_share": 0.6}, "^fp4_share and nf4_share must be 0 or more and add up to at most 1"),
])
def test_train_checks_its_config_before_building_anything(monkeypatch, changes, message) -> None:
    monkeypatch.setattr(training, "build_processor", lambda *a: pytest.fail("built a processor"))
    monkeypatch.setattr(training, "new_model", lambda *a, **k: pytest.fail("built a model"))
    with pytest.raises((TypeError, ValueError), match=message):
        training.train(TrainConfig(**changes), log=lambda _: None)
    with pytest.raises((TypeError, ValueError), match=message):
        check_config(TrainConfig(**changes))


def test_no_warmup_is_a_run_at_full_learning_rate_from_the_first_step() -> None:
    """--warmup 0 used to divide by zero; it now means what --warmup 1 always meant: no warm-up."""
    from helpers.world.language import build_processor

    processor = build_processor(64)
    model = training.new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=48, heads=2)
    lines: list[str] = []
    training.train(TrainConfig(vision_steps=1, steps=1, batch_size=1, warmup=0, lr=1e-3), processor=processor,
                   model=model, log=lines.append)
    joint = [line for line in lines if line.startswith("step ")]
    assert joint and "lr 1.00e-03" in joint[0], lines


def test_the_recorded_commands_of_the_shipped_model_pass_the_checks() -> None:
    """The model card's rebuild commands must still be accepted."""
    import shlex

    from helpers.course.paths import bundled_model_dir
    from helpers.world.modelcard import run_commands

    record = __import__("json").loads((bundled_model_dir() / "training.json").read_text())
    for command in run_commands(record, "data/kosmos2-tiny-world"):
        args = training.build_parser().parse_args(shlex.split(command)[4:])
        check_config(training.config_from_args(args))


def test_a_run_into_a_model_folder_removes_the_evaluations_of_the_weights_it_replaces(tmp_path, capsys) -> None:
    """The card reads evaluation*.json: left there, they would describe the old weights as the new ones; the card
    written from them goes too (with --no-evaluate nothing would rewrite it), a README of another kind stays."""
    out, other = tmp_path / "model", tmp_path / "other"
    for folder, readme in ((out, training.CARD_TITLE + "\n\nold figures\n"), (other, "# my notes\n")):
        folder.mkdir()
        for name in ("config.json", "evaluation.json", "evaluation-seed7.json", "notes.txt"):  # a model folder
            (folder / name).write_text("{}")
        (folder / "README.md").write_text(readme)
        code = helpers_main(["train", "--out", str(folder), "--vision-steps", "1", "--steps", "2", "--batch-size",
                             "2", "--threads", "1", "--no-evaluate"])
        assert code == 0
        assert (folder / "model.safetensors").is_file() and (folder / "notes.txt").is_file()
        assert not list(folder.glob("evaluation*.json"))
    printed, err = capsys.readouterr()
    assert "Writing model shards" not in err  # KOSMOS2_PROGRESS=0 (conftest): no progress bar when saving
    assert not (out / "README.md").exists() and (other / "README.md").read_text() == "# my notes\n"
    assert "removed evaluation-seed7.json, evaluation.json, README.md from" in printed


def test_a_share_of_exactly_1_is_accepted(tmp_path) -> None:
    """Shares run from 0 to 1, both ends included: ``--pair-share 1`` (every scene redrawn until it holds a pair)
    passes the option's type and check_config; nothing is built or trained."""
    args = training.build_parser().parse_args(["--out", str(tmp_path / "out"), "--pair-share", "1",
                                               "--three-share", "0"])
    cfg = training.config_from_args(args)
    assert (cfg.pair_share, cfg.three_share) == (1.0, 0.0)
    check_config(cfg)
    check_config(TrainConfig(pair_share=1.0, three_share=1.0))


def test_help_says_what_every_option_does_and_shows_its_default(monkeypatch) -> None:
    """--seed, --vision-steps, --batch-size, --lr, --threads, --aux-weight, --look-weight, --checkpoint-minutes and
    --workers had no help, so --help showed neither what they do nor their defaults."""
    import re

    monkeypatch.setenv("COLUMNS", "300")  # no line breaks inside a default
    parser = training.build_parser()
    text = parser.format_help()
    entries = re.split(r"\n  (?=-)", text[text.index("options:"):])[1:]
    helps = {e.split()[0].rstrip(","): " ".join(e.split()) for e in entries}
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert action.help and flag in helps, flag
        if action.nargs != 0 and action.default is not None:
            assert f"(default: {action.default})" in helps[flag], flag
    for flag, default in (("--seed", 0), ("--vision-steps", 300), ("--batch-size", 48), ("--lr", 0.002),
                          ("--aux-weight", 0.5), ("--look-weight", 0.5), ("--checkpoint-minutes", 10.0),
                          ("--workers", 0)):
        assert helps[flag].endswith(f"(default: {default})"), flag
    assert "torch CPU threads" in helps["--threads"]
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text


def test_an_out_folder_holding_other_files_is_refused(tmp_path, capsys, no_work) -> None:
    """A folder of photos, say: the run would have mixed a model's files into it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_text("")
    code = helpers_main(["train", "--out", str(photos), "--no-evaluate"])
    err = capsys.readouterr().err
    assert code == 2 and err.splitlines()[-1] == (
        f"{PREFIX}--out {str(photos)!r} holds files but no saved model: give a new or empty folder, or one with a "
        "model to replace")
    assert sorted(p.name for p in photos.iterdir()) == ["cat.jpg"]


def test_the_record_of_a_run_to_resume_is_checked_without_the_model_card_module(tmp_path) -> None:
    """The check of a training.json to resume lived in the model-card module, which `train --resume` imported in
    full (and only inside the function, as the two modules imported each other); it lives beside the record now."""
    run = tmp_path / "run"
    run.mkdir()
    (run / training.RECORD_FILE).write_text("[]", encoding="utf-8")
    code = ("import sys\nfrom pathlib import Path\nfrom helpers.world import training\n"
            f"try:\n    training._load_run(Path({str(run)!r}))\nexcept ValueError as err:\n    print(err)\n"
            "print('helpers.world.modelcard' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"training record {str(run / training.RECORD_FILE)!r}: it holds a JSON list, not an object; expected the "
        "record of the run as `python -m helpers train --out DIR` writes it (or no training.json at all)", "False"]

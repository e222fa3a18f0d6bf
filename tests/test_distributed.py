"""helpers.course.distributed: grounding spread over processes gives what one process gives, in order.

The two-process runs use ``accelerate launch`` on the CPU (gloo backend) with a tiny random-weight model
saved to a temporary folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.course.distributed import PROG, DistributedGroundingError, ground_distributed, main, map_between_processes
from helpers.grounding.images import load_image
from helpers.grounding.model import ground, load
from helpers.world.scenes import sample_scene
from helpers.grounding.tokens import strip_image_prefix

NEW_TOKENS = 12
N_IMAGES = 5  # odd: the two processes get shares of 3 and 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 1-layer random Kosmos-2 for the world's processor, saved like a real checkpoint.

    A freshly initialised tiny model answers the same thing whatever the image (its small weights barely
    see the pixels), which would hide a mix-up of the order. Weights redrawn at a larger scale make every
    image get its own answer (checked below).
    """
    from helpers.world.training import new_model
    from helpers.world.language import build_processor

    processor = build_processor(64)
    model = new_model(processor, vision_layers=1, text_layers=1, vision_dim=32, text_dim=32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 4 / param.shape[-1] ** 0.5)
    folder = tmp_path_factory.mktemp("tiny-random-kosmos2")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def image_paths(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("scenes")
    paths = []
    for seed in range(N_IMAGES):
        path = folder / f"scene_{seed}.png"
        sample_scene(seed).image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def reference(model_dir, image_paths) -> list[str]:
    """One process, one ground() call over all images: the answers the distributed run must reproduce."""
    model, processor = load(model_dir, device="cpu", verbose=False)
    results = ground(model, processor, [load_image(p) for p in image_paths], max_new_tokens=NEW_TOKENS,
                     batch_size=2, progress=False)
    return [strip_image_prefix(g.raw) for g in results]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], timeout: float = 240, **extra_env: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` with two CPU processes (CUDA hidden, so this runs the same on GPU machines)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", KOSMOS2_PROGRESS="0",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **extra_env)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "helpers", "distributed", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def test_reference_answers_differ_between_images(reference):
    assert len(set(reference)) == N_IMAGES, reference


def test_two_processes_give_the_single_process_results_in_order(model_dir, image_paths, reference, tmp_path):
    out = tmp_path / "results.jsonl"
    run = _launch([*map(str, image_paths), "--out", str(out), "--model", str(model_dir),
                   "--max-new-tokens", str(NEW_TOKENS), "--batch-size", "2"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 process(es)" in run.stdout
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in image_paths]
    assert [r["generated"] for r in records] == reference
    assert [(r["width"], r["height"]) for r in records] == [load_image(p).size for p in image_paths]


def test_a_failure_on_one_process_stops_every_process_with_its_message(model_dir, image_paths, tmp_path):
    """Every image is checked before the model loads, so the failure is injected: a sitecustomize module (on
    PYTHONPATH, run at each process's start) makes grounding fail on the process of rank 1 only."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import helpers.course.distributed as distributed\n"
        "    def failing(*args, **kwargs):\n"
        "        raise RuntimeError('grounding failed here on purpose')\n"
        "    distributed.ground = failing\n")
    out = tmp_path / "results.jsonl"
    run = _launch([*map(str, image_paths[:4]), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "2"],
                  PYTHONPATH=os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])))
    assert run.returncode != 0, run.stderr[-3000:]  # each process exits 2; the launcher then reports a failure
    # the second process (items 2 and 3) fails; the first one reports its message too, and neither waits forever
    assert run.stderr.count("process 1 failed on its share (items 2–3 of 4): RuntimeError: grounding failed here "
                            "on purpose") >= 2, run.stderr[-3000:]
    assert not out.exists()


def test_one_process_gives_what_ground_gives(model_dir, image_paths, reference):
    model, processor = load(model_dir, device="cpu", verbose=False)
    images = [load_image(p) for p in image_paths]
    results = ground_distributed(model, processor, images, max_new_tokens=NEW_TOKENS, batch_size=2)
    assert [strip_image_prefix(g.raw) for g in results] == reference
    # paths are loaded by the process that grounds them, with the same result
    from_paths = ground_distributed(model, processor, [str(p) for p in image_paths], max_new_tokens=NEW_TOKENS,
                                    batch_size=3)
    assert [g.raw for g in from_paths] == [g.raw for g in results]


def test_map_between_processes_keeps_order_and_reports_failures():
    assert map_between_processes(lambda idx: [i * 10 for i in idx], 4) == [0, 10, 20, 30]
    assert map_between_processes(lambda idx: [], 0) == []
    with pytest.raises(DistributedGroundingError, match="fn returned 1 results for 3 items"):
        map_between_processes(lambda idx: [0], 3)
    with pytest.raises(DistributedGroundingError, match="process 0 failed.*ZeroDivisionError"):
        map_between_processes(lambda idx: [1 / 0 for _ in idx], 2)
    with pytest.raises(ValueError, match="at least 0"):
        map_between_processes(lambda idx: idx, -1)
    with pytest.raises(TypeError, match="n must be an int"):
        map_between_processes(lambda idx: idx, 2.0)
    with pytest.raises(TypeError, match="accelerate.Accelerator or accelerate.PartialState"):
        map_between_processes(lambda idx: idx, 2, accelerator=object())


def test_ground_distributed_checks_its_arguments(model_dir, image_paths):
    model, processor = load(model_dir, device="cpu", verbose=False)
    images = [load_image(p) for p in image_paths[:2]]
    with pytest.raises(ValueError, match="got 2 images but 3 prompts"):
        ground_distributed(model, processor, images, ["a", "b", "c"])
    with pytest.raises(TypeError, match="images must be a list"):
        ground_distributed(model, processor, images[0])
    with pytest.raises(TypeError, match="prompts must be strings, .*; prompt 1 is int: 2"):
        ground_distributed(model, processor, images, ["<grounding> An image of", 2])
    with pytest.raises(ValueError, match="bboxes needs one entry per image"):
        ground_distributed(model, processor, images, bboxes=[None])
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        ground_distributed(model, processor, images, max_new_tokens=0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ground_distributed(model, processor, images, batch_size=0)


class _SecondOfTwo:
    """An accelerate state as process 1 of 2 sees it: its share of ``range(n)`` is the second half."""

    process_index, num_processes = 1, 2

    def split_between_processes(self, items):
        import contextlib

        return contextlib.nullcontext(items[len(items) // 2:])


@pytest.mark.parametrize("prompts, bboxes, message", [
    (["<grounding> An image of", ""], None, r"^prompt 1 must be a non-empty str"),
    (["<grounding> An image of", "<grounding><phrase> It</phrase> is"], [None, [(0.1, 0.1, 0.5, 0.5), None]],
     r"^bboxes\[1\] has 2 entries but prompt 1 .* has 1 <phrase>"),
])
def test_ground_distributed_checks_every_prompt_and_box_before_any_work(tmp_path, prompts, bboxes, message):
    """A bad prompt or box was found only inside the share of the process holding it, after its images were
    loaded, as a DistributedGroundingError naming the share's own index: "prompt 0" for the second prompt."""
    missing = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]  # loading them would fail: nothing is loaded
    with pytest.raises(ValueError, match=message):
        ground_distributed(None, None, missing, prompts, bboxes=bboxes, accelerator=_SecondOfTwo())


def test_command_line_rejects_bad_input_before_loading_a_model(tmp_path, monkeypatch, capsys):
    import helpers.course.distributed as distributed

    monkeypatch.setattr(distributed, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main([str(tmp_path / "missing.png"), "--out", str(tmp_path / "r.jsonl")]) == 2
    assert "missing.png" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "r.jsonl"), "--batch-size", "0"]) == 2
    assert "argument --batch-size: must be at least 1, got 0" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "r.jsonl"), "--prompt", " "]) == 2
    assert "argument --prompt: must not be empty" in capsys.readouterr().err
    assert main([str(tmp_path), "--out", str(tmp_path / "r.jsonl"), "--prompt", "<image> An image of"]) == 2
    err = capsys.readouterr().err
    assert "must not contain '<image>'" in err and "(this command takes no user box)" in err and "--box" not in err


def test_command_line_checks_out_before_any_work(image_paths, tmp_path, monkeypatch, capsys):
    """--out naming a folder (or a path under a file) is refused before a model loads, not after every image
    was grounded."""
    import helpers.course.distributed as distributed

    monkeypatch.setattr(distributed, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main([str(image_paths[0]), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--out {str(tmp_path)!r} is a folder; give the results file's name" in err and "Traceback" not in err
    (tmp_path / "file").write_text("")
    assert main([str(image_paths[0]), "--out", str(tmp_path / "file" / "r.jsonl")]) == 2
    assert "file' is a file, so nothing can be written under it" in capsys.readouterr().err
    (tmp_path / "fake.png").write_text("not a picture")  # found before the model loads, as ground's command does
    assert main([str(image_paths[0]), str(tmp_path / "fake.png"), "--out", str(tmp_path / "r.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "1 of 2 image(s) cannot be read" in err and "fake.png" in err and not (tmp_path / "r.jsonl").exists()


def test_command_line_never_writes_over_one_of_its_images(image_paths, tmp_path, monkeypatch, capsys):
    """--out one of the images (named, or found in a folder given) used to replace that image by JSON Lines."""
    import helpers.course.distributed as distributed

    monkeypatch.setattr(distributed, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    before = image_paths[1].read_bytes()
    for given in ([str(image_paths[0]), str(image_paths[1])], [str(image_paths[1].parent)]):
        assert main([*given, "--out", str(image_paths[1])]) == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [f"{PROG}: error: --out {str(image_paths[1])!r} is one of this command's "
                                            "own inputs, which the results would replace: choose another file for "
                                            "the results"]
    assert image_paths[1].read_bytes() == before


def test_command_line_records_a_large_photo_at_the_files_own_size(model_dir, tmp_path, capsys):
    """The model sees a copy shrunk to 4096 pixels a side; the record keeps the file's size (and boxes_px
    measured on it), here in one process."""
    from PIL import Image

    wide = tmp_path / "wide.png"
    Image.new("RGB", (4200, 1000), (200, 180, 160)).save(wide)
    out = tmp_path / "results.jsonl"
    assert main([str(wide), "--out", str(out), "--model", str(model_dir), "--max-new-tokens", "4", "--quiet"]) == 0
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert (record["width"], record["height"]) == (4200, 1000)
    for entity in record["entities"]:
        assert entity["boxes_px"] == [[round(x0 * 4200, 1), round(y0 * 1000, 1), round(x1 * 4200, 1),
                                       round(y1 * 1000, 1)] for x0, y0, x1, y1 in entity["boxes"]]


@pytest.mark.parametrize(("cuda", "mps", "xpu", "cpu"), [
    (True, False, False, False),  # CUDA: accelerate's NCCL processes, each on its GPU
    (False, True, False, True),  # Apple's MPS: accelerate has no multi-process backend for it
    (False, False, True, True),  # Intel's XPU: load() cannot put a model there
    (False, False, False, True),
])
def test_processes_use_a_gpu_only_where_load_can_put_the_model(monkeypatch, cuda, mps, xpu, cpu):
    """The processes' device follows model.try_gpu, the one rule for finding a GPU: only CUDA of what it finds."""
    import accelerate
    import torch

    from helpers.course import distributed

    made = []
    monkeypatch.setattr(accelerate, "PartialState", lambda cpu: made.append(cpu) or "state")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    monkeypatch.setattr(torch.xpu, "is_available", lambda: xpu)
    assert distributed._state() == "state" and made == [cpu]

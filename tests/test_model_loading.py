"""helpers.grounding.model.load: the real loading path, how the model is chosen, and safe loading.

Every model here is the tiny random-weight Kosmos-2 of ``tiny_model_dir`` (see conftest.py), or a damaged
copy of it. Nothing touches the network: hub lookups run with ``HF_HUB_OFFLINE=1`` and sockets that refuse
to connect.
"""

from __future__ import annotations

import builtins
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import helpers.grounding.model as hm
from helpers.grounding.model import REAL_MODEL, LoadInfo, ModelLoadError, ground, load, resolve_source
from helpers.course.paths import BUNDLED_MODEL_NAME, bundled_model_dir, repo_root
from helpers.grounding.tokens import Grounding, parse_generation

HELP_FRAGMENTS = (REAL_MODEL, "bundled offline model", "hub can be reached")


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args!r:.120}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(hm, "hub_reachable", refuse)


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("KOSMOS2_MODEL", raising=False)


def copy_model(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def assert_load_error(excinfo: pytest.ExceptionInfo, *fragments: str) -> str:
    """The error is a ModelLoadError (a ValueError) that says what went wrong and how to get a model."""
    assert isinstance(excinfo.value, ModelLoadError)
    assert isinstance(excinfo.value, ValueError)
    message = str(excinfo.value)
    for fragment in (*fragments, *HELP_FRAGMENTS):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert str(bundled_model_dir()) in message
    return message


def corner_picture(size: tuple[int, int], colour: tuple[int, int, int]) -> Image.Image:
    """A non-square picture: a coloured block in its top-right quarter on a grey background."""
    width, height = size
    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle([width * 3 // 4, 0, width - 1, height // 4 - 1], fill=colour)
    return image


# ------------------------------------------------------------------------------------- the real loading path


def test_load_prints_one_banner_and_keeps_what_it_loaded(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("KOSMOS2_MODEL", raising=False)
    model, processor = load(str(tiny_model_dir), device="cpu")
    out, err = capsys.readouterr()
    n_params = sum(p.numel() for p in model.parameters())
    info = model.load_info
    assert info == LoadInfo(source=str(tiny_model_dir), bundled=False, device="cpu", dtype="float32",
                            quantization=None, reason="you asked for it", parameters=n_params)
    assert out == f"Loaded {tiny_model_dir} ({n_params / 1e6:.1f} M parameters) on cpu, float32 — you asked for it.\n"
    assert err == ""
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not model.training
    assert type(processor).__name__ == "Kosmos2Processor"


def test_load_then_ground_two_non_square_images_of_different_sizes(tiny_model_dir: Path) -> None:
    model, processor = load(tiny_model_dir, verbose=False)  # a Path works as well as a str
    images = [corner_picture((120, 48), (220, 30, 30)), corner_picture((40, 100), (30, 30, 220))]
    results = ground(model, processor, images, max_new_tokens=6, progress=False)
    assert len(results) == 2
    for g in results:
        assert isinstance(g, Grounding)
        assert g.raw.startswith("<image>")
        assert "</image><grounding> An image of" in g.raw
        assert g.caption.startswith("An image of")
        assert parse_generation(g.raw) == g


def test_load_in_bfloat16_by_name(tiny_model_dir: Path) -> None:
    model, _ = load(tiny_model_dir, dtype="bfloat16", device="cpu", verbose=False)
    assert model.load_info.dtype == "bfloat16"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_kosmos2_model_variable_is_used_and_named(tiny_model_dir: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KOSMOS2_MODEL", str(tiny_model_dir))
    model, _ = load(device="cpu")
    assert model.load_info.source == str(tiny_model_dir)
    assert model.load_info.reason == "KOSMOS2_MODEL is set"
    assert capsys.readouterr().out.rstrip().endswith("— KOSMOS2_MODEL is set.")


def test_offline_without_the_real_model_loads_the_bundled_one(tiny_model_dir, tmp_path, monkeypatch, offline,
                                                              capsys) -> None:
    copy_model(tiny_model_dir, tmp_path / BUNDLED_MODEL_NAME)
    monkeypatch.setenv("KOSMOS2_COURSE_DATA", str(tmp_path))
    monkeypatch.setattr(hm, "real_model_cached", lambda repo_id=REAL_MODEL: False)
    model, _ = load(device="cpu")
    info = model.load_info
    assert info.bundled and Path(info.source) == tmp_path / BUNDLED_MODEL_NAME
    assert info.reason == f"HF_HUB_OFFLINE=1 and {REAL_MODEL} is not cached"
    banner = capsys.readouterr().out
    assert banner.startswith("Loaded bundled model kosmos2-tiny-world (")
    assert f"load {REAL_MODEL} for real photos" in banner


# ------------------------------------------------------------------------------------- how the model is chosen


@pytest.mark.parametrize(
    ("argument", "env", "cached", "expected"),
    [
        ("my/model", "env/model", True, ("my/model", "you asked for it")),
        (None, "env/model", True, ("env/model", "KOSMOS2_MODEL is set")),
        (None, "  ", True, (REAL_MODEL, "it is in the local Hugging Face cache")),  # blank counts as unset
        (None, None, True, (REAL_MODEL, "it is in the local Hugging Face cache")),
        (None, None, False, ("<bundled>", f"HF_HUB_OFFLINE=1 and {REAL_MODEL} is not cached")),
    ],
)
def test_resolve_source_order(argument, env, cached, expected, monkeypatch, offline) -> None:
    if env is not None:
        monkeypatch.setenv("KOSMOS2_MODEL", env)
    monkeypatch.setattr(hm, "real_model_cached", lambda repo_id=REAL_MODEL: cached)
    source, reason = resolve_source(argument)
    want_source = str(bundled_model_dir()) if expected[0] == "<bundled>" else expected[0]
    assert (source, reason) == (want_source, expected[1])


def test_online_probe_decides_only_when_nothing_else_does(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KOSMOS2_MODEL", raising=False)
    monkeypatch.setattr(hm, "real_model_cached", lambda repo_id=REAL_MODEL: False)
    monkeypatch.setattr(hm, "hub_reachable", lambda timeout=2.0: True)
    assert resolve_source(device="cuda") == (REAL_MODEL, "the model hub answered")
    monkeypatch.setattr(hm, "try_gpu", lambda: "cuda")
    assert resolve_source() == (REAL_MODEL, "the model hub answered")
    monkeypatch.setattr(hm, "hub_reachable", lambda timeout=2.0: False)
    assert resolve_source(device="cuda:0") == (str(bundled_model_dir()),
                                               f"the model hub did not answer and {REAL_MODEL} is not cached")


def test_without_a_cuda_gpu_the_real_model_is_not_downloaded_unasked(monkeypatch) -> None:
    """An online laptop without a CUDA GPU (a CPU, an Apple-silicon Mac) keeps the bundled model (the lessons'
    outputs are its own) instead of downloading the real model's 6.7 GB, and so does load(device="cpu") on a GPU
    machine; asked for, or cached, the real model is loaded."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("KOSMOS2_MODEL", raising=False)
    monkeypatch.setattr(hm, "real_model_cached", lambda repo_id=REAL_MODEL: False)
    monkeypatch.setattr(hm, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(hm, "try_gpu", lambda: "cpu")
    reason = (f"{REAL_MODEL} is not cached, and without a CUDA GPU it is not downloaded unasked: "
              f"load('{REAL_MODEL}') downloads it (about 6.7 GB)")
    assert resolve_source() == resolve_source(device="cpu") == (str(bundled_model_dir()), reason)
    assert resolve_source(device="cpu:0") == resolve_source(device="mps") == (str(bundled_model_dir()), reason)
    monkeypatch.setattr(hm, "try_gpu", lambda: "mps")
    assert resolve_source() == (str(bundled_model_dir()), reason)
    monkeypatch.setattr(hm, "try_gpu", lambda: "cuda")
    assert resolve_source(device="cpu") == (str(bundled_model_dir()), reason)
    assert resolve_source(REAL_MODEL, device="cpu") == (REAL_MODEL, "you asked for it")
    monkeypatch.setattr(hm, "real_model_cached", lambda repo_id=REAL_MODEL: True)
    assert resolve_source(device="cpu") == (REAL_MODEL, "it is in the local Hugging Face cache")


# ------------------------------------------------------------------------------------- safe loading


def test_no_module_of_helpers_trusts_remote_code() -> None:
    sources = sorted((repo_root() / "helpers").rglob("*.py"))
    assert len(sources) > 10
    offenders = [p.name for p in sources if re.search(r"trust_remote_code\s*=\s*True", p.read_text("utf-8"))]
    assert offenders == []
    model_source = (repo_root() / "helpers" / "grounding" / "model.py").read_text("utf-8")
    calls = re.findall(r"\.from_pretrained\([^)]*\)", model_source)
    assert calls and all("trust_remote_code=False" in c or "**kwargs" in c for c in calls)
    assert '"trust_remote_code": False' in model_source  # what **kwargs holds


def test_pickled_weights_only_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError) as excinfo:
        load(folder, verbose=False)
    assert_load_error(excinfo, "no .safetensors weights", "never pickled .bin files", str(folder))


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as excinfo:
        load(tmp_path / "no_such_model", verbose=False)
    assert_load_error(excinfo, "does not exist", "no_such_model")


def test_directory_without_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "no_config")
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError) as excinfo:
        load(folder, verbose=False)
    assert_load_error(excinfo, "has no config.json")


def test_corrupt_config(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "bad_config")
    (folder / "config.json").write_text('{"model_type": "kosmos-2", ', encoding="utf-8")
    with pytest.raises(ModelLoadError) as excinfo:
        load(folder, verbose=False)
    assert_load_error(excinfo, f"could not load {str(folder)!r}",
                      f"the config file at {str(folder / 'config.json')!r} is not a valid JSON file")


def test_truncated_safetensors(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError) as excinfo:
        load(folder, verbose=False)
    assert_load_error(excinfo, f"could not load {str(folder)!r}", "SafetensorError")


def test_a_missing_package_says_to_install_it_not_to_download_the_model(tiny_model_dir, monkeypatch) -> None:
    from transformers import AutoModelForImageTextToText

    def needs_a_package(*args, **kwargs):
        raise ImportError("Using `bitsandbytes` 4-bit quantization requires bitsandbytes: "
                          "`pip install -U bitsandbytes`")

    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", needs_a_package)
    with pytest.raises(ModelLoadError) as excinfo:
        load(tiny_model_dir, verbose=False)
    message = str(excinfo.value)
    assert "a package it needs is missing" in message and "pip install -U bitsandbytes" in message
    assert "restart the kernel" in message
    assert "hub can be reached" not in message and "bundled offline model" not in message


def test_a_file_is_not_a_model_directory(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError) as excinfo:
        load(tiny_model_dir / "config.json", verbose=False)
    assert_load_error(excinfo, "is a file; expected a model directory")


def test_empty_model_name(monkeypatch) -> None:
    with pytest.raises(ModelLoadError) as excinfo:
        load("", verbose=False)
    assert_load_error(excinfo, "model is an empty string")


def test_custom_code_is_refused_without_asking_or_running_it(tiny_model_dir, tmp_path, monkeypatch) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text("utf-8"))
    config["model_type"] = "kosmos-2-custom"
    config["auto_map"] = {"AutoConfig": "custom.Config", "AutoModelForImageTextToText": "custom.Model"}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    marker = tmp_path / "custom_code_ran"
    (folder / "custom.py").write_text(f"open({str(marker)!r}, 'w').close()\n", encoding="utf-8")

    questions: list[str] = []

    def answer_yes(prompt: str = "") -> str:  # what a user clicking through a prompt would do
        questions.append(prompt)
        return "y"

    monkeypatch.setattr(builtins, "input", answer_yes)
    with pytest.raises(ModelLoadError) as excinfo:
        load(folder, verbose=False)
    assert_load_error(excinfo, "custom Python code", "never runs such code")
    assert questions == []
    assert not marker.exists()


def test_uncached_hub_id_offline_fails_before_any_download(offline, monkeypatch) -> None:
    from transformers import AutoProcessor

    monkeypatch.setattr(hm, "real_model_cached", lambda repo_id=REAL_MODEL: False)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: pytest.fail("from_pretrained was called"))
    with pytest.raises(ModelLoadError) as excinfo:  # and no connection (the offline fixture fails any)
        load("someone/no-such-kosmos", verbose=False)
    assert_load_error(excinfo, "'someone/no-such-kosmos' looks like a hub id", "HF_HUB_OFFLINE=1")


def test_uncached_hub_id_fails_at_once_when_the_hub_does_not_answer(monkeypatch) -> None:
    """Online but unreachable: a short probe says so at once, instead of minutes of transformers' retries."""
    from transformers import AutoProcessor

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hm, "real_model_cached", lambda repo_id=REAL_MODEL: False)
    monkeypatch.setattr(hm, "hub_reachable", lambda timeout=2.0: False)
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: pytest.fail("from_pretrained was called"))
    with pytest.raises(ModelLoadError) as excinfo:
        load("someone/no-such-kosmos", verbose=False)
    assert_load_error(excinfo, "'someone/no-such-kosmos' looks like a hub id that is not in the local cache",
                      "the Hugging Face hub did not answer")


def test_a_bad_kosmos2_model_variable_is_named_in_the_error(tmp_path, monkeypatch) -> None:
    """The learner passed no model: the message must say where the name came from, and not promise the
    fallback that the variable prevents."""
    monkeypatch.setenv("KOSMOS2_MODEL", str(tmp_path / "nomodel"))
    with pytest.raises(ModelLoadError) as excinfo:
        load(verbose=False)
    message = str(excinfo.value)
    assert f"model directory {str(tmp_path / 'nomodel')!r} does not exist" in message
    assert "came from the KOSMOS2_MODEL environment variable: correct it, or unset it" in message
    assert "falls back" not in message
    with pytest.raises(ModelLoadError, match="falls back to the bundled offline model"):  # named by the caller
        load(str(tmp_path / "nomodel"), verbose=False)


def test_a_library_error_becomes_one_line_with_one_full_stop() -> None:
    message = str(hm._load_failure("m", OSError("We couldn't connect.\nCheck your connection.")))
    assert "OSError: We couldn't connect. Check your connection. To use the real model" in message
    assert "\n" not in message and ".." not in message


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"quantization": "3bit"}, ValueError, r"quantization must be None \(let load\(\) choose\) or one of "
                                               r"'4bit', 'nf4', '8bit', 'int8', 'int4', 'int4-onnx', 'none', "
                                               r"got '3bit'"),
        ({"quantization": "int4", "dtype": "float32"}, ValueError, r"'int4' computes in bfloat16"),
        ({"dtype": "float33"}, ValueError, r"dtype must be a torch dtype or its name"),
        ({"dtype": "nn"}, ValueError, r"dtype must be a torch dtype or its name \(e\.g\. 'bfloat16'\), got 'nn'"),
        ({"dtype": 16}, ValueError, r"got int: 16"),
        ({"dtype": "int8"}, ValueError, r"floating-point dtype .* use quantization='8bit'"),
        ({"device": "gpu"}, ValueError, r"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got 'gpu'"),
        ({"device": 0}, TypeError, r"device must be a str"),
        ({"device": "meta"}, ValueError, r"got 'meta'"),
    ],
)
def test_bad_options_are_refused_before_loading(tiny_model_dir, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        load(tiny_model_dir, verbose=False, **kwargs)


def test_a_gpu_that_is_not_there(tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device 'cuda' needs a CUDA GPU, but torch sees none"):
        load(tiny_model_dir, device="cuda", verbose=False)


def test_one_device_has_one_name() -> None:
    import torch

    from helpers.grounding.model import check_device, default_dtype

    assert check_device("cpu:0") == check_device(torch.device("cpu")) == "cpu"
    assert default_dtype("mps:0") == default_dtype("mps") == torch.float16
    assert default_dtype("cpu:0") == torch.float32


def test_the_machine_of_a_record_is_described_once(monkeypatch) -> None:
    """Benchmarks, model cards, training and fine-tuning records name the machine in one way: the CPU's model from
    /proc/cpuinfo (not just "x86_64"), its cores, and the threads torch uses."""
    from helpers.grounding import model as model_module

    cpuinfo = "processor\t: 0\nvendor_id\t: Genuine\nmodel name\t: Test CPU 9000 @ 3.00GHz\nflags\t: sse\n"
    real_read = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: cpuinfo if str(self) == "/proc/cpuinfo"
                        else real_read(self, *a, **k))
    monkeypatch.setattr(model_module.os, "cpu_count", lambda: 16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert model_module.describe_device("cpu:0") == "Test CPU 9000 @ 3.00GHz (16 cores, torch uses 3 threads)"
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda where: f"Test GPU {where}")
    assert model_module.describe_device("cuda:1") == "Test GPU cuda:1"


def test_a_folder_of_adapters_says_to_load_them_with_their_base(tmp_path: Path) -> None:
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base/kosmos"}),
                                                encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"holds LoRA adapters \(adapter_config\.json\), not a whole model: "
                                             r"load their base model with them, "
                                             r"load\('base/kosmos', adapter='.*adapters'\)"):
        load(folder, verbose=False)


def test_a_folder_of_another_model_type_is_named_in_one_line(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "bert")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(ModelLoadError) as excinfo:
        load(folder, verbose=False)
    message = str(excinfo.value)
    assert message.startswith(f"{str(folder)!r} holds a 'bert' model, not Kosmos-2: expected a Kosmos-2 checkpoint")
    assert "\n" not in message and len(message) < 300


def test_a_name_no_hub_id_can_have_is_taken_for_a_missing_folder(offline) -> None:
    with pytest.raises(ModelLoadError, match=r"^model directory 'not a/valid id!!' does not exist\."):
        load("not a/valid id!!", verbose=False)


@pytest.mark.parametrize("model", [3, ["a/b"], b"path"])
def test_model_of_the_wrong_type(model) -> None:
    with pytest.raises(TypeError, match=r"model must be a directory path or a hub id"):
        load(model, verbose=False)


def test_a_kosmos2_model_variable_is_named_when_its_weights_fail_to_load(tiny_model_dir, tmp_path, monkeypatch) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "truncated")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    monkeypatch.setenv("KOSMOS2_MODEL", str(folder))
    with pytest.raises(ModelLoadError) as excinfo:
        load(verbose=False)
    message = str(excinfo.value)
    assert "SafetensorError" in message and "came from the KOSMOS2_MODEL environment variable" in message
    assert "falls back" not in message


def test_the_hub_probe_asks_huggingface_hubs_endpoint_and_counts_any_answer(monkeypatch) -> None:
    """A mirror (HF_ENDPOINT) is asked instead of huggingface.co; a refusal or a rate limit is an answer (the
    hub is there), only silence is not."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "https://mirror.example/")
    asked = []

    def answer(error):
        def urlopen(request, timeout):
            asked.append(request.full_url)
            raise error
        return urlopen

    for error, reachable in ((urllib.error.HTTPError("u", 429, "Too Many Requests", {}, None), True),
                             (urllib.error.HTTPError("u", 403, "Forbidden", {}, None), True),
                             (urllib.error.URLError("no route to host"), False), (TimeoutError(), False)):
        monkeypatch.setattr(urllib.request, "urlopen", answer(error))
        assert hm.hub_reachable() is reachable, error
    assert set(asked) == {f"https://mirror.example/api/models/{REAL_MODEL}"}


def test_a_cache_with_sharded_safetensors_counts_as_cached(tmp_path, monkeypatch) -> None:
    import huggingface_hub

    files = {"config.json": tmp_path / "config.json", "model.safetensors.index.json": tmp_path / "index.json",
             "model-00001-of-00002.safetensors": tmp_path / "a", "model-00002-of-00002.safetensors": tmp_path / "b"}
    (tmp_path / "index.json").write_text(json.dumps({"weight_map": {
        "x.weight": "model-00001-of-00002.safetensors", "y.weight": "model-00002-of-00002.safetensors"}}))
    present = dict(files)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo_id, name: str(present[name]) if name in present else None)
    assert hm.real_model_cached("someone/sharded")
    del present["model-00002-of-00002.safetensors"]  # one shard missing: not usable offline
    assert not hm.real_model_cached("someone/sharded")
    present = {"config.json": files["config.json"]}  # no weights at all (or only pytorch_model.bin)
    assert not hm.real_model_cached("someone/sharded")

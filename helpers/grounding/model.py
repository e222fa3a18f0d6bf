"""Load a Kosmos-2 model and ground images with it.

``load()`` picks, in this order: the model you name → ``$KOSMOS2_MODEL`` → ``microsoft/kosmos-2-patch14-224``
when it is cached, or when there is a CUDA GPU and the hub answers a short probe (never probed when
``HF_HUB_OFFLINE=1``) → the small model bundled in ``data/``, trained by this project on its synthetic world.
One banner line says what was loaded, where, in which dtype, and why.

Everything uses the transformers 5 idioms: ``AutoModelForImageTextToText`` (``AutoModelForVision2Seq`` is
gone), ``quantization_config=BitsAndBytesConfig(...)`` (``load_in_4bit=`` is gone) and ``dtype=``
(``torch_dtype=`` is deprecated). Weights load from safetensors only; remote code is never trusted.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from helpers.course.paths import bundled_model_dir
from helpers.grounding import quantization as quant
from helpers.grounding.boxes import check_with_area, is_one_box
from helpers.grounding.checks import check_bool, check_count, check_positive_int
from helpers.grounding.progress import env_flag, interactive
from helpers.grounding.prompts import CAPTION_PROMPT, check_prompt, phrase_count
from helpers.grounding.tokens import Grounding, parse_generation

#: The hub id of Microsoft's Kosmos-2: what :func:`load` picks when neither its argument nor ``$KOSMOS2_MODEL``
#: names a model, if it is cached, or if there is a CUDA GPU and the hub answers.
REAL_MODEL = "microsoft/kosmos-2-patch14-224"

#: Functions called as ``hook(images, prompts, results)`` after every :func:`ground` call, with the RGB
#: images, one prompt per image and the results. Empty unless something adds to it: the course's main job
#: adds one to keep what each notebook grounded (:func:`helpers.course.outputs.start_recording`).
GROUND_HOOKS: list[Callable[[list, list[str], list[Grounding]], None]] = []


class ModelLoadError(ValueError):
    """A model could not be loaded; the message says what was tried and how to get a working one."""


@dataclass(frozen=True)
class LoadInfo:
    """What :func:`load` loaded and why (also kept as ``model.load_info``)."""

    source: str
    bundled: bool
    device: str
    dtype: str
    quantization: str | None
    reason: str
    parameters: int
    quantization_reason: str = ""  # why load() chose the quantization by itself ("" when asked for or none)
    adapter: str | None = None
    graph: str = ""  # int4-onnx: where its text decoder graphs came from ("" for other quantizations)
    quantization_label: str = ""  # what the banner says of the quantization (Plan.label)

    def banner(self) -> str:
        size = f"{self.parameters / 1e6:.1f} M" if self.parameters < 1e9 else f"{self.parameters / 1e9:.2f} B"
        quantized = f", {self.quantization_label}" if self.quantization_label else ""
        name = "bundled model kosmos2-tiny-world" if self.bundled else self.source
        adapter = f" with the adapters in {self.adapter}" if self.adapter else ""
        line = f"Loaded {name}{adapter} ({size} parameters) on {self.device}, {self.dtype}{quantized} — {self.reason}."
        if self.quantization_reason:
            line += f" {self.quantization_reason}."
        if self.graph:
            line += f" {self.graph}."
        if self.bundled:
            line += (" It only knows its synthetic world (coloured shapes, a snowman, a fire, Kumo);"
                     f" load {REAL_MODEL} for real photos.")
        return line


def try_gpu() -> str:
    """``"cuda"`` when a CUDA GPU is visible, else ``"mps"`` on Apple silicon, else ``"cpu"``."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def native_bf16(device: str) -> bool:
    """True when ``device`` is a GPU that computes in bfloat16 natively: a CUDA GPU of compute capability 8.0
    or newer (Ampere: A100, RTX 30xx, L4, H100 …) or a ROCm GPU. False on the CPU, on MPS and without CUDA.

    ``torch.cuda.is_bf16_supported()`` alone also says True on older GPUs such as a T4 (compute capability 7.5),
    where bfloat16 is only emulated, slowly, because it merely checks that a bfloat16 tensor can be created.
    """
    import torch

    where = torch.device(device)
    if where.type != "cuda" or not torch.cuda.is_available():
        return False
    return bool(torch.version.hip) or torch.cuda.get_device_capability(where)[0] >= 8


def check_bf16(device: str) -> None:
    """Raise ``ValueError`` when bfloat16 computing is asked for (``--bf16``) on ``device``, a CUDA GPU that
    would only emulate it (:func:`native_bf16`): slowly, and nothing would say so while it runs.

    CPUs are not refused: those with AMX or AVX-512 BF16 compute in bfloat16 quickly.

    Raises:
        TypeError, ValueError: also for a ``device`` that :func:`load` would refuse (one this machine lacks).
    """
    import torch

    device = check_device(device)
    where = torch.device(device)
    if where.type == "cuda" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(where)
        raise ValueError(f"--bf16 (bf16=True): the GPU {torch.cuda.get_device_name(where)} ({device}) has compute "
                         f"capability {major}.{minor}, without native bfloat16 arithmetic (that needs 8.0 or newer), "
                         "so bfloat16 would only be emulated, slowly; leave out --bf16 on this GPU (training then "
                         "runs in float32)")


def default_dtype(device: str):
    """bf16 on GPUs that compute in it natively (:func:`native_bf16`), fp16 on other GPUs (a Colab T4), float32
    on the CPU."""
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if native_bf16(device) else torch.float16
    if kind == "mps":
        return torch.float16
    return torch.float32


def _offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is on (``1``, ``true``, ``yes``, ``on``: :func:`.progress.env_flag`)."""
    return env_flag("HF_HUB_OFFLINE") is True


def real_model_cached(repo_id: str = REAL_MODEL) -> bool:
    """True when the model's config and safetensors weights are in the local Hugging Face cache: one
    ``model.safetensors``, or every shard that ``model.safetensors.index.json`` lists."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False

    def cached(name: str) -> str | None:
        path = try_to_load_from_cache(repo_id, name)
        return path if isinstance(path, str) else None

    if cached("config.json") is None:
        return False
    if cached("model.safetensors") is not None:
        return True
    index = cached("model.safetensors.index.json")
    try:
        shards = set(json.loads(Path(index).read_text(encoding="utf-8"))["weight_map"].values()) if index else set()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    return bool(shards) and all(cached(shard) is not None for shard in shards)


def hub_reachable(timeout: float = 2.0) -> bool:
    """A short probe of the model hub (never called when ``HF_HUB_OFFLINE=1``): the real model's page on the
    endpoint ``huggingface_hub`` uses (``HF_ENDPOINT``, for a mirror). Any HTTP answer counts, a refusal or a
    rate limit included (the hub is there; downloads may still work); no answer within ``timeout`` does not."""
    from huggingface_hub import constants

    url = f"{constants.ENDPOINT.rstrip('/')}/api/models/{REAL_MODEL}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except Exception:
        return False


def resolve_source(model: str | os.PathLike | None = None, device: str | None = None) -> tuple[str, str]:
    """Which model :func:`load` would load on ``device`` (None: :func:`try_gpu`'s choice), and why:
    ``(source, reason)``.

    The model asked for, else ``$KOSMOS2_MODEL``, else the real Kosmos-2 when it is in the local Hugging Face cache,
    or when ``device`` is a CUDA GPU and a short probe of the hub answers (:func:`hub_reachable`; none under
    ``HF_HUB_OFFLINE=1``), else the bundled model. Elsewhere (a CPU, Apple's MPS) the real model is not downloaded
    unasked: its checkpoint is about 6.7 GB (a room of laptops on one network would each fetch it), and the lessons'
    outputs are the bundled model's."""
    if model is not None:
        return str(model), "you asked for it"
    env = os.environ.get("KOSMOS2_MODEL", "").strip()
    if env:
        return env, "KOSMOS2_MODEL is set"
    if real_model_cached():
        return REAL_MODEL, "it is in the local Hugging Face cache"
    if _offline():
        return str(bundled_model_dir()), f"HF_HUB_OFFLINE=1 and {REAL_MODEL} is not cached"
    if not str(device or try_gpu()).startswith("cuda"):
        return str(bundled_model_dir()), (f"{REAL_MODEL} is not cached, and without a CUDA GPU it is not downloaded "
                                          f"unasked: load('{REAL_MODEL}') downloads it (about 6.7 GB)")
    if hub_reachable():
        return REAL_MODEL, "the model hub answered"
    return str(bundled_model_dir()), f"the model hub did not answer and {REAL_MODEL} is not cached"


def _how_to_get_help(from_env: bool = False) -> str:
    if from_env:  # while the variable is set, load() with no argument does not fall back: say how to stop that
        return (f" The name came from the KOSMOS2_MODEL environment variable: correct it, or unset it so that load() "
                f"with no argument chooses again ('{REAL_MODEL}' when it is cached, or when there is a CUDA GPU and "
                f"the Hugging Face hub can be reached, else the bundled offline model in {bundled_model_dir()}).")
    return (f" To use the real model, load('{REAL_MODEL}') where the Hugging Face hub can be reached (Colab, for "
            f"example; it downloads about 6.7 GB), or point load() at a local copy of it. Without it, load() with "
            f"no argument falls back to the bundled offline model in {bundled_model_dir()}.")


def _check_local_dir(path: Path, from_env: bool = False) -> None:
    help_ = _how_to_get_help(from_env)
    if path.is_file():
        raise ModelLoadError(f"{str(path)!r} is a file; expected a model directory (holding config.json and "
                             "*.safetensors weights)." + help_)
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist." + help_)
    if not (path / "config.json").is_file():
        adapter = path / "adapter_config.json"
        if adapter.is_file():  # finetune's output: adapters that need their base model
            try:
                base = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
            except (OSError, ValueError, AttributeError):
                base = None
            raise ModelLoadError(f"{str(path)!r} holds LoRA adapters (adapter_config.json), not a whole model: load "
                                 f"their base model with them, load({str(base or 'BASE')!r}, adapter={str(path)!r})"
                                 + (" (the base their adapter_config.json names)." if base else "."))
        raise ModelLoadError(f"{str(path)!r} has no config.json, so it is not a saved model." + help_)
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(
            f"{str(path)!r} has no .safetensors weights (only safetensors are loaded, never pickled .bin files)."
            + help_
        )


def check_source(source: str, from_env: bool = False, hub_answered: bool = False) -> str:
    """Check, before anything loads, that ``source`` can be loaded from where it is; return it (a local folder
    as a path string).

    A local folder (or what is not a hub id) must hold ``config.json`` and safetensors weights; a hub id that
    is not in the local cache needs the hub: refused at once under ``HF_HUB_OFFLINE=1``, and when a short probe
    (:func:`hub_reachable`) gets no answer, instead of minutes of transformers' retries (``hub_answered``: a
    probe just did answer, so none is made). ``from_env``: the name came from ``KOSMOS2_MODEL``, which the
    message then names.

    Raises:
        ModelLoadError: with what is wrong and how to get a model.
    """
    local = Path(source).expanduser()
    if local.exists() or not _looks_like_hub_id(source):  # a local directory (or a typo of one)
        _check_local_dir(local, from_env)
        return str(local)
    if not real_model_cached(source):
        if _offline():
            raise ModelLoadError(f"{source!r} looks like a hub id, but HF_HUB_OFFLINE=1 and it is not in the local "
                                 "cache (nor is there a local directory of that name)." + _how_to_get_help(from_env))
        if not hub_answered and not hub_reachable():
            raise ModelLoadError(f"{source!r} looks like a hub id that is not in the local cache (nor is there a local "
                                 "directory of that name), and the Hugging Face hub did not answer, so it cannot be "
                                 "downloaded." + _how_to_get_help(from_env))
    return source


def describe_device(device: str = "cpu") -> str:
    """What runs on ``device``, in words, for the records of a run (a benchmark's facts, a model card, the
    training and fine-tuning records): the GPU's name, or the CPU's model with the cores the system has and the
    threads torch uses, e.g. ``AMD EPYC 9B14 (2 cores, torch uses 2 threads)``.

    The CPU's model comes from ``/proc/cpuinfo`` where there is one (Linux), else from :mod:`platform`."""
    import platform

    import torch

    where = torch.device(device)
    if where.type == "cuda":
        return torch.cuda.get_device_name(device)
    if where.type == "mps":
        return f"Apple GPU (MPS) on {platform.machine()}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu} ({os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads)"


def check_device(device: object) -> str:
    """``device`` as a string, after checking that torch can use it: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or
    ``"mps"`` (``"cpu:0"`` and ``"mps:0"`` become ``"cpu"`` and ``"mps"``, so that one name means one device)."""
    import torch

    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str such as 'cpu', 'cuda' or 'mps', got {type(device).__name__}: {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} needs a CUDA GPU, but torch sees none "
                             "(torch.cuda.is_available() is False); leave device unset to use what is there")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: torch sees "
                             f"{torch.cuda.device_count()} CUDA GPU(s)")
    elif parsed.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r} needs Apple's MPS backend, which is not available here; "
                             "leave device unset to use what is there")
    elif parsed.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}")
    return str(parsed) if parsed.type == "cuda" else parsed.type


def _check_dtype(dtype: object):
    """``dtype`` as a floating-point ``torch.dtype`` (``None`` stays ``None``); accepts names like ``'bfloat16'``."""
    import torch

    if dtype is None:
        return None
    if isinstance(dtype, str):
        value = getattr(torch, dtype.strip(), None) if dtype.strip() else None
        if not isinstance(value, torch.dtype):
            raise ValueError(f"dtype must be a torch dtype or its name (e.g. 'bfloat16'), got {dtype!r}")
        dtype = value
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch dtype or its name (e.g. 'bfloat16'), "
                         f"got {type(dtype).__name__}: {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype (float32, float16 or bfloat16), got {dtype}; "
                         "for 8-bit or 4-bit weights use quantization='8bit' or '4bit'")
    return dtype


def _load_failure(source: str, err: Exception, from_env: bool = False) -> ModelLoadError:
    """A :class:`ModelLoadError` for an exception raised by ``from_pretrained`` (``from_env``: the name came from
    ``KOSMOS2_MODEL``)."""
    text = str(err)
    if "trust_remote_code" in text or "custom code" in text:
        return ModelLoadError(
            f"could not load {source!r}: it needs custom Python code from the model folder or the hub (an "
            "'auto_map' in its config), and load() never runs such code. Expected a Kosmos-2 checkpoint "
            "(model_type 'kosmos-2') that transformers loads with its own code." + _how_to_get_help(from_env)
        )
    if isinstance(err, ImportError):  # the model is there; a package is not: downloading would not help
        return ModelLoadError(f"could not load {source!r}: a package it needs is missing ({type(err).__name__}: "
                              f"{text}). Install it in this environment (pip install …), then restart the kernel "
                              "or the Python process, so that transformers sees it.")
    text = " ".join(text.split())  # one line: some library messages span several
    end = "" if text.endswith((".", "!", "?")) else "."
    return ModelLoadError(f"could not load {source!r}: {type(err).__name__}: {text}{end}" + _how_to_get_help(from_env))


def read_config(source: str, from_env: bool = False):
    """The config of the model at ``source`` (a folder or hub id) without its weights, quietly; a failure is a
    :class:`ModelLoadError` worded as :func:`load` words it (``from_env``: the name came from ``KOSMOS2_MODEL``)."""
    from transformers import AutoConfig

    try:
        with _quiet():
            return AutoConfig.from_pretrained(source, trust_remote_code=False)
    except Exception as err:  # a corrupt config.json, a hub id the hub does not know …
        raise _load_failure(source, err, from_env) from err


def check_kosmos2_config(source: str, config) -> None:
    """Raise :class:`ModelLoadError` unless ``config`` (of the model at ``source``) is a Kosmos-2 one: the one
    check of the model type, for :func:`load` and for fine-tuning's base."""
    if config.model_type != "kosmos-2":
        raise ModelLoadError(f"{source!r} holds a {config.model_type!r} model, not Kosmos-2: expected a Kosmos-2 "
                             f"checkpoint (model_type 'kosmos-2') such as '{REAL_MODEL}' or the bundled "
                             f"{bundled_model_dir()}")


@contextlib.contextmanager
def _quiet():
    """Silence transformers' progress bars and advisory warnings while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    progress = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        hf_logging.set_verbosity(level)
        if progress:
            hf_logging.enable_progress_bar()


def load(
    model: str | os.PathLike | None = None,
    *,
    quantization: str | None = None,
    dtype: Any = None,
    device: str | None = None,
    verbose: bool = True,
    adapter: str | os.PathLike | None = None,
):
    """Load ``(model, processor)``; see the module docstring for how the model is chosen.

    ``quantization`` is one of :data:`helpers.grounding.quantization.QUANTIZATIONS`: ``"4bit"`` (the article's FP4),
    ``"nf4"`` and ``"8bit"`` (bitsandbytes, on a CUDA GPU or the CPU), ``"int8"`` and ``"int4"`` (CPU),
    ``"int4-onnx"`` (the text decoder in ONNX Runtime, CPU: the model returned only generates, see
    :mod:`helpers.grounding.onnx_decoder`) or ``"none"``; ``None`` lets
    :func:`helpers.grounding.quantization.plan` choose (on a CPU, int4 for the real model's size, or int8 where
    torchao is missing; float weights otherwise), and the banner says what it chose. ``dtype`` (a floating
    ``torch.dtype`` or its name) defaults to :func:`helpers.grounding.quantization.default_dtype_for`:
    :func:`default_dtype` of the device, but bfloat16 for ``"int8"``, ``"int4"`` and ``"int4-onnx"``, and float16
    for the article's ``"4bit"`` on a GPU (whose 4-bit arithmetic then stays float32, the article's; a ``dtype``
    given computes in that dtype); ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``) to
    :func:`try_gpu`.

    ``adapter`` is a folder of LoRA adapters saved by ``python -m helpers finetune``: they are checked
    against the base and attached (the model becomes a ``peft.PeftModel``; with ``"int8"``, ``"int4"`` and
    ``"int4-onnx"`` they are merged into the float weights before those are quantized). Merge them into the
    weights for faster generation with ``model = model.merge_and_unload()``.

    Raises:
        TypeError: ``model`` is not a str, a path or None; ``device`` is not a str.
        ValueError: a bad ``quantization``, ``dtype`` or ``device`` (or one this machine does not have).
        helpers.grounding.quantization.QuantizationError: (a ``ValueError``) a quantization this machine cannot
            do: the library missing or too old, or the wrong device; the message says what to install or choose.
        ModelLoadError: the model could not be found or loaded (missing folder, no config.json, no
            safetensors weights, corrupt files, a hub id that is not cached while offline, custom code).
            The message says how to get the real model and that the bundled one is the offline fallback.
        helpers.grounding.finetune.FinetuneError: ``adapter`` is not a saved adapter folder, or was trained on
            another base.
    """
    dtype, device = _check_load_args(model, quantization, dtype, device, verbose)
    with quant.quiet_imports():  # transformers imports torchao, when installed, which reports optional kernels
        from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: F401 (first import, quietly)

    device = device or try_gpu()
    source, reason = resolve_source(model, device)
    bundled = Path(source).exists() and Path(source).resolve() == bundled_model_dir().resolve()
    from_env = model is None and reason == "KOSMOS2_MODEL is set"
    source = check_source(source, from_env=from_env, hub_answered=reason == "the model hub answered")
    config = read_config(source, from_env)
    check_kosmos2_config(source, config)
    if quantization is not None:  # a quantization this machine cannot do is refused before loading anything
        quant.plan(quantization, device, dtype, None)
    net, processor, chosen = _load_weights(source, config, quantization, dtype, device, from_env)
    net, parameters = _attach_and_quantize(net, chosen, device, adapter)
    quant.release_freed_memory()  # what loading and converting freed (bitsandbytes' 4-bit: 1.1 GiB kept, not 5.8)
    info = LoadInfo(
        source=source, bundled=bundled, device=str(device), dtype=str(chosen.dtype).replace("torch.", ""),
        quantization=chosen.quantization, reason=reason, parameters=parameters,
        quantization_reason=chosen.reason, adapter=str(adapter) if adapter is not None else None,
        graph=net.describe_graphs() if chosen.quantization in quant.ONNXRUNTIME else "",
        quantization_label=chosen.label or "",
    )
    net.load_info = info
    if verbose:
        print(info.banner())
    return net, processor


def _check_load_args(model: object, quantization: object, dtype: object, device: object, verbose: object):
    """Check :func:`load`'s arguments before anything is read; returns ``(dtype, device)`` as load uses them
    (a ``torch.dtype`` or None, a device string or None)."""
    if model is not None and not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a directory path or a hub id like '{REAL_MODEL}' (or None to let load() "
                        f"choose), got {type(model).__name__}: {model!r:.80}")
    if isinstance(model, str) and not model.strip():
        raise ModelLoadError("model is an empty string: expected a model directory or a hub id like "
                             f"'{REAL_MODEL}'; pass None to let load() choose." + _how_to_get_help())
    check_bool("verbose", verbose)
    quant.check_name(quantization)
    dtype = _check_dtype(dtype)
    if device is not None:
        device = check_device(device)
    return dtype, device


def _load_weights(source: str, config, quantization: str | None, dtype, device: str, from_env: bool):
    """The processor and the weights of ``source`` on ``device``, with the quantization that
    :func:`helpers.grounding.quantization.plan` chooses; returns ``(net, processor, plan)``. Files that do not load
    raise :class:`ModelLoadError` (:func:`_load_failure`)."""
    from transformers import AutoProcessor

    size = None
    try:
        with _quiet():
            processor = AutoProcessor.from_pretrained(source, trust_remote_code=False)
            if quantization is None and device == "cpu":  # load() chooses by the model's size
                size = parameters_from_config(config)
    except Exception as err:  # corrupt files, missing files on the hub, no network, custom code …
        raise _load_failure(source, err, from_env) from err
    chosen = quant.plan(quantization, device, dtype, size)
    try:
        with _quiet():
            net = pretrained(source, chosen, device)
    except Exception as err:  # corrupt files, missing files on the hub, no network, custom code …
        raise _load_failure(source, err, from_env) from err
    return net, processor, chosen


def pretrained(source: str | os.PathLike, chosen: quant.Plan, device: str):
    """The weights of ``source`` as transformers loads them for the plan ``chosen``
    (:func:`helpers.grounding.quantization.from_pretrained_kwargs`), safetensors only, no custom code. bitsandbytes
    quantizes each weight while transformers loads it; on a CPU the memory that frees goes back to the system
    meanwhile (:func:`helpers.grounding.quantization.releasing_freed_memory`)."""
    from transformers import AutoModelForImageTextToText

    kwargs = {**quant.from_pretrained_kwargs(chosen, device), "use_safetensors": True, "trust_remote_code": False}
    trimming = chosen.quantization in quant.BITSANDBYTES and device == "cpu"
    with quant.releasing_freed_memory() if trimming else contextlib.nullcontext():
        return AutoModelForImageTextToText.from_pretrained(source, **kwargs)


def _attach_and_quantize(net, chosen: quant.Plan, device: str, adapter: str | os.PathLike | None):
    """Put the loaded ``net`` on ``device``, attach ``adapter`` (merged in before an in-place or ONNX quantization)
    and quantize it as the plan ``chosen`` says, in eval mode; returns ``(net, parameters)``, its parameters (the
    adapters' included) counted before quantizing.

    The in-place and ONNX paths get ``net`` in its checkpoint's own type (:func:`quant.from_pretrained_kwargs`),
    which transformers maps from disk: the quantized weights are made from it, and only what stays in torch is
    then put in ``chosen.dtype``, so the process never holds a converted copy of the whole model."""
    quantization = chosen.quantization
    parameters = parameter_count(net)
    if quantization not in quant.BITSANDBYTES:  # bitsandbytes placed the weights already
        net = net.to(device)
    if adapter is not None:
        from helpers.grounding.finetune import attach_adapter

        net = attach_adapter(net, adapter)
        parameters = parameter_count(net)
        if quantization in (*quant.IN_PLACE, *quant.ONNXRUNTIME):  # quantized with the adapters merged in
            net = net.merge_and_unload()
    if quantization in quant.IN_PLACE:
        quant.quantize(net, quantization)
    net.eval()
    if quantization in quant.ONNXRUNTIME:
        from helpers.grounding.onnx_decoder import OnnxRuntimeKosmos2

        net = OnnxRuntimeKosmos2(net, dtype=chosen.dtype)
    return net, parameters


def parameter_count(model) -> int:
    """The model's parameters, a bitsandbytes 4-bit weight counted by its shape (its storage packs two in a byte)."""
    return sum(math.prod(p.quant_state.shape) if getattr(p, "quant_state", None) is not None else p.numel()
               for p in model.parameters())


def parameters_from_config(config) -> int:
    """Parameters of a model of this ``config`` (a transformers config, e.g. ``Kosmos2Config()``), counted on the
    meta device (no weights read, no memory taken)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    return sum(p.numel() for p in skeleton.parameters())


def _looks_like_hub_id(name: str) -> bool:
    """Whether ``name`` reads as ``owner/model`` on the hub (else :func:`check_source` takes it for a folder)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parts = name.split("/")
    if len(parts) != 2 or not all(parts) or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:  # spaces, '!' …: no hub id can be spelled so
        return False
    return True


# --------------------------------------------------------------------------------------------- grounding


def default_batch_size(model) -> int:
    """Images per ``generate`` call: larger on a GPU, where batching is nearly free."""
    device = str(next(model.parameters()).device)
    return 32 if device.startswith("cuda") else 8



_IMAGE_HELP = ("a PIL image, or a file path, URL or image bytes (bytes, bytearray, memoryview) that "
               "helpers.grounding.images.load_image reads "
               "(for a numpy array use PIL.Image.fromarray(array))")


def _describe(value: object) -> str:
    """``type: repr`` for error messages; arrays by their shape (their repr spans many lines)."""
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__} of shape {tuple(shape)}"
    return f"{type(value).__name__}: {value!r:.80}"


#: The forms of image bytes that load_image reads.
_BYTES = (bytes, bytearray, memoryview)


def _prepare_images(images) -> list:
    """``images`` as a list of RGB PIL images: paths, URLs and bytes are loaded, other modes converted."""
    from PIL import Image

    from helpers.grounding.images import load_image, to_rgb

    if isinstance(images, (Image.Image, str, os.PathLike, *_BYTES)):
        items = [images]
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        raise TypeError(f"images must be one image or a list of images, each {_IMAGE_HELP}; "
                        f"got {_describe(images)}")
    out = []
    for i, image in enumerate(items):
        if isinstance(image, Image.Image):
            out.append(image if image.mode == "RGB" else to_rgb(image))
        elif isinstance(image, (str, os.PathLike, *_BYTES)):
            out.append(load_image(image))
        else:
            raise TypeError(f"images[{i}] must be {_IMAGE_HELP}; got {_describe(image)}")
    return out


@dataclass(frozen=True)
class Decoding:
    """How ``generate`` picks the next token; always deterministic (no sampling).

    ``num_beams=1`` is greedy search. ``no_repeat_ngram_size=n`` (n ≥ 1) forbids any sequence of n tokens
    from appearing twice in the output; 0 switches this off.

    Raises:
        TypeError: a setting that is not a whole number (``2.0``, ``"3"``, ``True``).
        ValueError: ``num_beams`` below 1, ``no_repeat_ngram_size`` below 0.
    """

    num_beams: int = 1
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_beams", check_positive_int("Decoding.num_beams", self.num_beams))
        object.__setattr__(self, "no_repeat_ngram_size",  # 0 is "off"
                           check_count("Decoding.no_repeat_ngram_size", self.no_repeat_ngram_size))

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``model.generate``."""
        # always given, so a model's own generation_config cannot switch the rule on or off unseen
        return {"do_sample": False, "num_beams": self.num_beams, "no_repeat_ngram_size": self.no_repeat_ngram_size}


#: Plain greedy search: the default of :func:`ground` and of the synthetic evaluation.
GREEDY = Decoding()
#: The decoding of the Kosmos-2 authors' RefCOCO and Flickr30k Entities evaluation scripts
#: (``--beam 1 --no-repeat-ngram-size 3``); the default of those evaluations here.
AUTHORS_DECODING = Decoding(num_beams=1, no_repeat_ngram_size=3)


def ground(
    model,
    processor,
    images,
    prompts: str | Sequence[str] = CAPTION_PROMPT,
    bboxes: Sequence | None = None,
    max_new_tokens: int = 128,
    batch_size: int | None = None,
    progress: bool | None = None,
    decoding: Decoding = GREEDY,
) -> list[Grounding]:
    """Generate for each image and parse the output into :class:`~helpers.grounding.tokens.Grounding` objects.

    ``images`` is one image or a list (an empty list gives an empty list); each image is a PIL image (any
    mode: it is converted to RGB as :func:`helpers.grounding.images.to_rgb` does, transparency on white) or a file
    path, URL or image bytes, loaded with :func:`helpers.grounding.images.load_image`. ``prompts`` is one prompt for
    all or one per image, each a non-empty str; ``bboxes`` (one entry per image, as the processor takes them:
    ``None`` for no user box, or a list with exactly one entry per ``<phrase>…</phrase>`` of the prompt, each a
    normalized box, a list of boxes or ``None``) adds user boxes after the prompt's phrases. A batch only holds
    prompts of the same token length (no padding), so no token's position depends on ``batch_size`` or on the
    other prompts: in float32 on a CPU the results are the same at any batch size, while in half precision on a
    GPU the kernels chosen for each batch size may round differently and, rarely, swap a nearly tied token. Each
    result's ``.raw`` is the decoded text, ``<image>…</image>`` part included. ``decoding`` says how tokens are chosen
    (:class:`Decoding`; greedy by default, :data:`AUTHORS_DECODING` is what the Kosmos-2 authors used for their
    benchmarks).

    Raises:
        TypeError: ``model`` or ``processor`` is not what :func:`load` returns (``None``, the two swapped …), or an
            image, a prompt, a ``bboxes`` entry, ``max_new_tokens``, ``batch_size`` or ``decoding`` of the wrong
            type.
        ValueError: an empty prompt or one holding image or location tokens
            (:func:`helpers.grounding.prompts.check_prompt`; a box goes in as ``bboxes``), counts that do not
            match (prompts or ``bboxes`` entries vs images, boxes vs phrases, ``[]`` for a prompt with phrases), a
            box that is not a normalized box with area (a pixel box, inverted, NaN …), or a count below 1.
        helpers.grounding.images.ImageLoadError: an image path or URL could not be loaded.
    """
    import torch

    swapped = "; are model and processor swapped? It is ground(model, processor, images, …)"
    if not (isinstance(model, torch.nn.Module) and callable(getattr(model, "generate", None))):
        raise TypeError(f"model must be a Kosmos-2 model, the first of the two that load() returns, got "
                        f"{type(model).__name__}{swapped if hasattr(model, 'tokenizer') else ''}")
    if isinstance(processor, torch.nn.Module) or not (callable(processor) and hasattr(processor, "tokenizer")
                                                       and hasattr(processor, "batch_decode")):
        raise TypeError(f"processor must be the Kosmos-2 processor, the second of the two that load() returns, got "
                        f"{type(processor).__name__}{swapped if isinstance(processor, torch.nn.Module) else ''}")
    max_new_tokens = check_positive_int("max_new_tokens", max_new_tokens)
    if not isinstance(decoding, Decoding):
        raise TypeError(f"decoding must be a helpers.grounding.model.Decoding, e.g. Decoding(no_repeat_ngram_size=3), "
                        f"got {type(decoding).__name__}: {decoding!r:.80}")
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    images = _prepare_images(images)
    if not images:
        return []
    prompts_l, bboxes = check_prompts_and_boxes(prompts, bboxes, len(images))
    batch_size = batch_size or default_batch_size(model)
    device = next(model.parameters()).device
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    tokenizer = processor.tokenizer
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    results: list[Grounding | None] = [None] * len(images)
    batches = _equal_length_batches(processor, prompts_l, bboxes, batch_size)
    if progress is None:
        progress = interactive()
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="grounding", unit="batch")
    try:
        for batch in batches:
            kwargs = {}
            if bboxes is not None:
                kwargs["bboxes"] = [bboxes[i] for i in batch]
            inputs = processor(text=[prompts_l[i] for i in batch], images=[images[i] for i in batch], padding=True,
                               return_tensors="pt", **kwargs)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                     **decoding.generate_kwargs())
            # the text as the tokens spell it: a tokenizer that "cleans up" spaces would turn an asked phrase such
            # as "Two young , White males" (Flickr30k's spacing) into another string, which then matches no phrase
            texts = processor.batch_decode(out, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            for i, text in zip(batch, texts):
                results[i] = parse_generation(text)
    finally:
        tokenizer.padding_side = old_side
    for hook in GROUND_HOOKS:
        hook(images, prompts_l, results)
    return results  # type: ignore[return-value]  (every slot is filled)


def check_prompts_and_boxes(prompts, bboxes, n: int) -> tuple[list[str], list | None]:
    """:func:`ground`'s checks of ``prompts`` and ``bboxes`` for ``n`` images, also run by
    :func:`helpers.course.distributed.ground_distributed` before any work: one prompt per image (``prompts`` is a
    list or tuple, or one prompt for all), each by :func:`helpers.grounding.prompts.check_prompt`'s rule and named
    by its index, and ``bboxes`` ``None`` or one entry per image that fits its prompt's phrases.

    Returns:
        The list of ``n`` prompts, and ``bboxes`` in the processor's form (``None`` when not given).

    Raises:
        TypeError, ValueError: as :func:`ground` says for its prompts and ``bboxes``.
    """
    prompts_l = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts] * n
    if len(prompts_l) != n:
        raise ValueError(f"got {n} images but {len(prompts_l)} prompts; give one prompt or one per image")
    for i, p in enumerate(prompts_l):
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, e.g. {CAPTION_PROMPT!r}; prompt {i} is "
                            f"{type(p).__name__}: {p!r:.80}")
        check_prompt(p, f"prompt {i}")
    if bboxes is not None:
        if isinstance(bboxes, (str, bytes)) or not isinstance(bboxes, (list, tuple)):
            raise TypeError(f"bboxes must be a list with one entry per image, got {_describe(bboxes)}")
        bboxes = list(bboxes)
        if len(bboxes) != n:
            raise ValueError(f"bboxes needs one entry per image ({n}), got {len(bboxes)}")
        bboxes = [_boxes_for_processor(b, prompts_l[i], i) for i, b in enumerate(bboxes)]
    return prompts_l, bboxes


def _equal_length_batches(processor, prompts: list[str], bboxes: list | None, batch_size: int) -> list[list[int]]:
    """Indices of the items, in batches of at most ``batch_size`` whose prompts have the same token length.

    Kosmos-2's text model in transformers numbers the positions of generated tokens from the length of the
    *padded* prompt, so a left-padded prompt would see shifted positions and generate something else than
    alone. Batches without padding avoid this; items keep their order within each length.
    """
    lengths = []
    for i, prompt in enumerate(prompts):
        boxes = [bboxes[i]] if bboxes is not None else None
        lengths.append(len(processor(text=[prompt], bboxes=boxes)["input_ids"][0]))
    batches: list[list[int]] = []
    for length in dict.fromkeys(lengths):  # lengths in order of first appearance
        same = [i for i, n in enumerate(lengths) if n == length]
        batches.extend(same[k:k + batch_size] for k in range(0, len(same), batch_size))
    return batches


def _boxes_for_processor(entry, prompt: str, index: int):
    """Check image ``index``'s ``bboxes`` entry against its prompt; the processor's form (tuples of 4 floats)."""
    if entry is None:
        return None
    if isinstance(entry, (str, bytes)) or not hasattr(entry, "__len__") or not hasattr(entry, "__iter__"):
        raise TypeError(f"bboxes[{index}] must be None or a list with one entry per <phrase> of the prompt, "
                        f"got {type(entry).__name__}: {entry!r:.80}")
    entry = list(entry)
    if is_one_box(entry):
        raise ValueError(f"bboxes[{index}] is a single box {tuple(entry)}, but each image's entry must be a list "
                         "with one box per <phrase>: for one box write bboxes=[[box]] (one image, one phrase)")
    phrases = phrase_count(prompt)
    if len(entry) != phrases:  # [] too, for a prompt with phrases: None is how to say "no box for this image"
        raise ValueError(f"bboxes[{index}] has {len(entry)} entries but prompt {index} ({prompt!r:.100}) has "
                         f"{phrases} <phrase>…</phrase> pair(s); give one entry per phrase (a box, a list of "
                         "boxes, or None), or None instead of the list for no user box")
    out = []
    for j, per_phrase in enumerate(entry):
        where = f"bboxes[{index}][{j}]"
        if per_phrase is None:
            out.append(None)
            continue
        if isinstance(per_phrase, (str, bytes)) or not hasattr(per_phrase, "__len__"):
            raise TypeError(f"{where} must be a normalized box (x0, y0, x1, y1), a list of them or None, "
                            f"got {type(per_phrase).__name__}: {per_phrase!r:.80}")
        several = len(per_phrase) > 0 and all(hasattr(b, "__len__") and not isinstance(b, (str, bytes))
                                              for b in per_phrase)
        try:
            if several:
                out.append([check_with_area(b) for b in per_phrase])
            else:
                out.append(check_with_area(per_phrase))
        except ValueError as err:
            err.add_note(f"(in {where}: the user box for phrase {j} of prompt {index})")
            raise
    return out


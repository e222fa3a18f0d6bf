"""Quantized Kosmos-2 weights: the article's bitsandbytes paths and the course's CPU paths.

``load(quantization=...)`` takes one of these names:

===============  ===================================================================  ============  =========
name             weights                                                              library       devices
===============  ===================================================================  ============  =========
``"4bit"``       4-bit FP4, ``BitsAndBytesConfig(load_in_4bit=True)``: the article's  bitsandbytes  CUDA, CPU
``"nf4"``        4-bit NormalFloat (``bnb_4bit_quant_type="nf4"``), as QLoRA uses     bitsandbytes  CUDA, CPU
``"8bit"``       LLM.int8 (``load_in_8bit=True``)                                     bitsandbytes  CUDA, CPU
``"int8"``       int8 decoder weights, a scale per output, bfloat16 activations       torch         CPU
``"int4"``       int4 decoder weights in groups of 32, bfloat16 activations           torchao       CPU
``"int4-onnx"``  the text decoder in graphs: 4-bit weights per token, 8-bit prompt    ONNX Runtime  CPU
``"none"``       no quantization: the float weights in ``dtype``                      –             any
===============  ===================================================================  ============  =========

The bitsandbytes paths quantize while ``from_pretrained`` loads (transformers leaves ``lm_head`` in float, as
for the article). ``"4bit"`` without a ``dtype`` is the article's set-up exactly: ``BitsAndBytesConfig(load_in_4bit=
True)`` with bitsandbytes' defaults (FP4 codes, float32 arithmetic) and, on a GPU, the layers it leaves alone in
float16, which transformers 4 chose by itself for a bitsandbytes load without a ``torch_dtype`` (transformers 5
keeps float32; on a CPU so does the course). With a ``dtype`` (as fine-tuning asks for its 4-bit base), and for
``"nf4"``, the 4-bit arithmetic is in that dtype too, as QLoRA does (:func:`default_dtype_for`).
``"int8"`` and ``"int4"`` (:func:`quantize`) quantize the loaded model's text decoder,
``lm_head`` included: at batch 1 a CPU spends most of each generated token reading weights, and the output
layer (65 037 × 2 048 in Kosmos-2) is the largest single one. They keep the vision tower and the image-to-text
projection in bfloat16, since those run once per image (:data:`KEEPS_BFLOAT16`). ``"int8"`` gives every layer
int8 weights (:class:`helpers.grounding.int8_linear.Int8Linear`, torch's ``_weight_int8pack_mm`` kernel; that
module says why not torchao's int8); ``"int4"`` gives torchao's int4 weights to the layers torch's int4 kernel
takes and int8 ones to the rest (``lm_head``). ``"int4-onnx"`` turns the text decoder into ONNX
Runtime graphs, one with 4-bit weights for each new token and one with 8-bit weights for the prompt
(:mod:`helpers.grounding.onnx_decoder`); the model it returns only generates.

``quantization=None`` lets :func:`plan` choose: on a CPU, a model of at least :data:`AUTO_CPU_PARAMETERS`
parameters (the real Kosmos-2 has 1.66 B) gets :data:`AUTO_CPU_CHOICE`, the fastest CPU path per token at
batch 1 in ``bench/benchmark.py --cpu-table`` (two cores, AMD EPYC, 2026-12-02 00:36-00:57 UTC;
``bench/results/cpu``) among those that give a whole model: int4 0.055 s per token, against the article's
4-bit 0.078 s, NF4 0.081 s, int8 0.087 s, bfloat16 0.148 s and float32 0.36-0.46 s (on an Intel Xeon two days
before, int4 0.111 s, the article's 4-bit 0.148 s). ``"int4-onnx"`` was faster still, 0.034 s, but has no
forward pass (no logits, no fine-tuning) and takes about a minute to build at its first load (later loads
read the built graphs from disk), so it is asked for, not chosen. Where torchao is missing or too old,
:data:`AUTO_CPU_FALLBACK` (``"int8"``, torch alone) is chosen instead, and where neither runs the model stays in
float32; the banner then says why and what to install. On the bundled model every path keeps every evaluation
figure within 0.4 points of float32 (``bench/bundled_accuracy.py``).
Smaller models (the bundled one) stay in float32, which measured faster for them. Everything else keeps float
weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.metadata
import io
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any

from helpers.grounding.checks import check_positive_number

#: Every name ``load(quantization=...)`` accepts (``None`` means: let :func:`plan` choose).
QUANTIZATIONS = ("4bit", "nf4", "8bit", "int8", "int4", "int4-onnx", "none")
BITSANDBYTES = ("4bit", "nf4", "8bit")
TORCHAO = ("int4",)
#: The paths that load float weights, then replace the text decoder's layers (:func:`quantize`).
IN_PLACE = ("int8", "int4")
ONNXRUNTIME = ("int4-onnx",)
#: The oldest ONNX Runtime this course checked the int4-onnx graph with.
MIN_ONNXRUNTIME = "1.32"
#: The oldest transformers whose Kosmos-2 has what the int4-onnx path calls: ``get_image_features`` on
#: ``Kosmos2ForConditionalGeneration`` and ``forward_embedding(cache_length=...)`` (both new in 5.24.0; Google
#: Colab shipped 5.15).
MIN_TRANSFORMERS_ONNX = "5.24"
#: The oldest bitsandbytes this course has checked 4-bit and LLM.int8 inference with on a CPU (older
#: releases may lack the CPU code, so they are refused there).
MIN_BITSANDBYTES_CPU = "0.50.2"
#: The oldest bitsandbytes with the CUDA features transformers 5 uses.
MIN_BITSANDBYTES_CUDA = "0.43"
#: The oldest torchao with the CPU int4 layout used here (``PrototypeInt4WeightOnlyConfig``).
MIN_TORCHAO = "0.18"
#: On a CPU, models at least this large are quantized by default (``quantization=None``) ...
AUTO_CPU_PARAMETERS = 1_000_000_000
#: ... with this path (see the module docstring for the measurement behind it) ...
AUTO_CPU_CHOICE = "int4"
#: ... or, where torchao is missing or too old, with this one (torch alone; the next fastest whole model).
AUTO_CPU_FALLBACK = "int8"
#: The CPU paths, roughly fastest per token first in ``bench/results/cpu``: the order in which a message about a
#: missing library suggests the ones that run. int4-onnx and int4 lead in every run; int8 and bitsandbytes' 4bit and
#: nf4 trade places from run to run (0.068-0.090 s per token in the runs of 2026-12-01), and int8 comes first of
#: them as the one that needs torch alone.
CPU_PREFERENCE = ("int4-onnx", "int4", "int8", "4bit", "nf4", "8bit")
#: Seconds between two hand-backs of freed memory while bitsandbytes quantizes during loading
#: (:func:`releasing_freed_memory`).
TRIM_INTERVAL = 0.2
#: Group size of the int4 path: int4 weights in groups of this many values, each group with its own scale and
#: zero point. Chosen on earlier bundled weights (220 held-out scenes, text decoder in int4), where groups of 32
#: moved comprehension accuracy@1 by -0.4 points and groups of 64 by -1.4 (HQQ scales, below); on today's weights
#: int4 stays within 0.4 points of float32 on every figure (``bench/results/cpu/bundled_accuracy.md``). On
#: Kosmos-2's 2 048 x 8 192 layers a product with one token takes about as long in groups of 32 as of 128.
INT4_GROUP_SIZE = 32
#: Layers the int8 and int4 paths leave in bfloat16: the vision tower and the image-to-text projection run once
#: per image (the text decoder runs once per token, so its weights are what a CPU reads at every step). In int4 they
#: cost earlier bundled weights 1.2 points of comprehension. On the real model's architecture the int4 prefill
#: (image and prompt) took 2.45 s with them in int4 in an early run, when float32's took 2.49 s; with them in
#: bfloat16 it takes 0.92 s against float32's 2.30 s (``bench/results/cpu``, 2026-12-01).
KEEPS_BFLOAT16 = ("vision_model.", "image_to_text_projection.")
#: Models up to this size get int4 scales chosen by HQQ (half-quadratic optimisation of each group's scale and
#: zero point), larger ones min-max scales (torchao's "tinygemm" default). HQQ is the more accurate (earlier
#: bundled weights: comprehension -0.4 points against -1.4 with min-max) but takes about 0.36 s per million weights on
#: two cores: seconds for the bundled model, some 7 minutes at every load of the real Kosmos-2.
INT4_HQQ_MAX_PARAMETERS = 100_000_000

INSTALL = "pip install -e '.[quant]' in your clone of the course"

DESCRIPTIONS = {
    "4bit": "4-bit FP4 weights (bitsandbytes, the article's BitsAndBytesConfig(load_in_4bit=True))",
    "nf4": "4-bit NF4 weights (bitsandbytes)",
    "8bit": "LLM.int8 weights (bitsandbytes)",
    "int8": "int8 weights, a scale per output, bfloat16 activations (torch's _weight_int8pack_mm)",
    "int4": "int4 weights, bfloat16 activations (torchao)",
    "int4-onnx": "the text decoder in ONNX Runtime, 4-bit weights (MatMulNBits) for each new token, 8-bit "
                 "(MatMulInteger) for the prompt",
}


class QuantizationError(ValueError):
    """A quantization this machine cannot do; the message says what to install or choose instead."""


@dataclass(frozen=True)
class Plan:
    """How :func:`helpers.grounding.model.load` loads a model: which quantization (``None``: float weights), which
    dtype."""

    quantization: str | None
    dtype: Any  # torch.dtype
    reason: str = ""  # why load() chose it by itself ("" when it was asked for)
    compute_dtype: Any = None  # bitsandbytes' 4-bit arithmetic (None: in dtype)

    @property
    def label(self) -> str | None:
        """What the banner says of the quantization: the article's ``"4bit"`` only when it computes as the
        article did (float32), and the arithmetic when it differs from the weights' dtype."""
        import torch

        if not self.quantization:
            return None
        compute = self.compute_dtype or self.dtype
        text = DESCRIPTIONS[self.quantization]
        if self.quantization == "4bit" and compute != torch.float32:
            text = "4-bit FP4 weights (bitsandbytes)"
        if compute != self.dtype:
            text += f", {str(compute).removeprefix('torch.')} arithmetic"
        return text


def installed_version(package: str) -> str | None:
    """The installed version of the distribution ``package`` (``"torchao"``), or ``None`` when it is missing."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def running_version(package: str) -> str | None:
    """The version of ``package`` this session runs: its module's ``__version__`` once imported, else the installed
    one (:func:`installed_version`). They differ after ``pip install -U`` in a running notebook, until a restart."""
    return getattr(sys.modules.get(package), "__version__", None) or installed_version(package)


def onnx_packages() -> tuple[str, ...]:
    """The packages the int4-onnx path needs: those of the course's ``quant`` extra (``pyproject.toml``, read by
    :func:`helpers.course.colab.extra_packages`) whose names start with ``onnx``: onnxruntime, onnx, onnx-ir."""
    from helpers.course.colab import EXTRAS

    return tuple(name for name in EXTRAS["quant"] if name.startswith("onnx"))


def _older(version: str, minimum: str) -> bool:
    from packaging.version import Version

    return Version(version) < Version(minimum)


def check_name(quantization: object) -> str | None:
    """``quantization`` if it is a known name or ``None``; a ``ValueError`` listing the names otherwise."""
    if quantization is None or (isinstance(quantization, str) and quantization in QUANTIZATIONS):
        return quantization
    raise ValueError(f"quantization must be None (let load() choose) or one of "
                     f"{', '.join(repr(q) for q in QUANTIZATIONS)}, got {quantization!r}")


def check_available(quantization: str, device: str) -> None:
    """Raise :class:`QuantizationError` when ``quantization`` cannot run on ``device`` with what is installed. When
    a library is missing or too old for a CPU path, the message also names the CPU paths that do run here."""
    problem = _problem(quantization, device)
    if problem is None:
        return
    message, library = problem
    if library and device.split(":")[0] == "cpu":
        others = [repr(q) for q in CPU_PREFERENCE if q != quantization and _problem(q, device) is None]
        either = " or ".join(filter(None, [", ".join(others[:-1]), others[-1]])) if others else ""
        verb = "runs" if len(others) == 1 else "run (roughly fastest first)"
        message += (f". On this machine's CPU, quantization={either} {verb} instead" if others else
                    ". No quantized path runs on this machine's CPU as it is; quantization='none' gives float32")
    raise QuantizationError(message)


def _problem(quantization: str, device: str) -> tuple[str, bool] | None:
    """``None`` when ``quantization`` can run on ``device``; else ``(message, library)``: what to install or
    choose instead, and whether the trouble is a missing or old library (rather than the device)."""
    kind = device.split(":")[0]
    if quantization in BITSANDBYTES:
        if kind not in ("cuda", "cpu"):
            return (f"quantization={quantization!r} (bitsandbytes) runs on a CUDA GPU or on the CPU, not on "
                    f"{device!r}; pass device='cpu', or quantization='none' for float weights on {device!r}", False)
        version = installed_version("bitsandbytes")
        minimum = MIN_BITSANDBYTES_CPU if kind == "cpu" else MIN_BITSANDBYTES_CUDA
        if version is None:
            return (f"quantization={quantization!r} needs bitsandbytes >= {minimum}, which is not installed: "
                    f"{INSTALL} (or pip install 'bitsandbytes>={minimum}')", True)
        if _older(version, minimum):
            where = "on the CPU" if kind == "cpu" else "with transformers 5"
            return (f"quantization={quantization!r} {where} needs bitsandbytes >= {minimum}; this machine has "
                    f"{version}: pip install -U 'bitsandbytes>={minimum}'", True)
    elif quantization in IN_PLACE:
        if kind != "cpu":
            return (f"quantization={quantization!r} is this course's CPU path (torch's CPU kernels), not for "
                    f"{device!r}; on a CUDA GPU use '4bit', 'nf4' or '8bit', or pass device='cpu'", False)
        from helpers.grounding.int8_linear import int8_kernel_available

        if not int8_kernel_available():
            import torch

            return (f"quantization={quantization!r} multiplies int8 weights with torch's _weight_int8pack_mm, "
                    f"which this torch ({torch.__version__}) does not have: pip install -U torch", True)
        if quantization in TORCHAO:
            version = installed_version("torchao")
            if version is None:
                return (f"quantization={quantization!r} needs torchao >= {MIN_TORCHAO}, which is not installed: "
                        f"{INSTALL} (or pip install 'torchao>={MIN_TORCHAO}')", True)
            if _older(version, MIN_TORCHAO):
                return (f"quantization={quantization!r} needs torchao >= {MIN_TORCHAO}; this machine has {version}: "
                        f"pip install -U 'torchao>={MIN_TORCHAO}'", True)
    elif quantization in ONNXRUNTIME:
        if kind != "cpu":
            return (f"quantization={quantization!r} runs the text decoder in ONNX Runtime on the CPU, not on "
                    f"{device!r}; on a CUDA GPU use '4bit', 'nf4' or '8bit', or pass device='cpu'", False)
        missing = [name for name in onnx_packages() if installed_version(name) is None]
        if missing:
            return (f"quantization={quantization!r} needs {', '.join(missing)}, "
                    f"{'which is' if len(missing) == 1 else 'which are'} not installed: {INSTALL} (or pip "
                    f"install 'onnxruntime>={MIN_ONNXRUNTIME}' onnx onnx-ir)", True)
        version = installed_version("onnxruntime")
        if _older(version, MIN_ONNXRUNTIME):
            return (f"quantization={quantization!r} needs onnxruntime >= {MIN_ONNXRUNTIME}; this machine has "
                    f"{version}: pip install -U 'onnxruntime>={MIN_ONNXRUNTIME}'", True)
        version = running_version("transformers")
        if _older(version, MIN_TRANSFORMERS_ONNX):
            return (f"quantization={quantization!r} needs transformers >= {MIN_TRANSFORMERS_ONNX}; this session runs "
                    f"{version}: pip install -U 'transformers>={MIN_TRANSFORMERS_ONNX}', then restart the session "
                    "(on Colab: Runtime > Restart session)", True)
    return None


def default_dtype_for(quantization: str | None, device: str):
    """The dtype :func:`plan` gives ``quantization`` on ``device`` when none is asked for: float16 for the
    article's ``"4bit"`` on a GPU (what transformers 4 gave the article's load), bfloat16 for the CPU paths
    ``"int8"``, ``"int4"`` and ``"int4-onnx"``, else :func:`helpers.grounding.model.default_dtype`."""
    import torch

    from helpers.grounding.model import default_dtype

    if quantization == "4bit" and device.split(":")[0] == "cuda":
        return torch.float16
    if quantization in IN_PLACE or quantization in ONNXRUNTIME:
        return torch.bfloat16
    return default_dtype(device)


def plan(quantization: str | None, device: str, dtype, parameters: int | None) -> Plan:
    """The quantization and dtype :func:`~helpers.grounding.model.load` uses (``dtype=None``: the path's default).

    ``quantization=None`` chooses: on a CPU, for models of at least :data:`AUTO_CPU_PARAMETERS` parameters
    and no ``dtype`` asked for, :data:`AUTO_CPU_CHOICE` where it can run, else :data:`AUTO_CPU_FALLBACK`, else
    float32, with a reason that says why and what to install; float weights everywhere else. ``"int8"`` and
    ``"int4"`` compute in bfloat16, the only activation type their CPU kernels are fast in.
    """
    import torch

    quantization = check_name(quantization)
    reason = ""
    if quantization is None:
        big = parameters is not None and parameters >= AUTO_CPU_PARAMETERS
        quantization = "none"
        if device.split(":")[0] == "cpu" and big and dtype is None:
            quantization, reason = _automatic_cpu_choice(device)
    if quantization == "none":
        return Plan(None, dtype or default_dtype_for(None, device), reason)
    if not reason:  # asked for (an automatic choice was checked when it was made)
        check_available(quantization, device)
    if quantization in IN_PLACE and dtype is not None and dtype != torch.bfloat16:
        raise ValueError(f"quantization={quantization!r} computes in bfloat16 (its CPU kernels' activation "
                         f"type), got dtype={dtype}; leave dtype unset or pass 'bfloat16'")
    if quantization == "4bit" and dtype is None:  # the article's: bitsandbytes' own float32 arithmetic
        return Plan(quantization, default_dtype_for(quantization, device), reason, compute_dtype=torch.float32)
    # int4-onnx: dtype is what the vision tower and the embeddings keep (the graphs are float32)
    return Plan(quantization, dtype or default_dtype_for(quantization, device), reason)


def _automatic_cpu_choice(device: str) -> tuple[str, str]:
    """``(quantization, reason)`` for a large model on a CPU when none was asked for: :data:`AUTO_CPU_CHOICE`,
    else :data:`AUTO_CPU_FALLBACK`, else float weights (``"none"``); the reason says why, and what to install."""
    problem = _problem(AUTO_CPU_CHOICE, device)
    if problem is None:
        return AUTO_CPU_CHOICE, (
            f"load() chose quantization={AUTO_CPU_CHOICE!r}, the fastest CPU path that gives a whole model; "
            "quantization='int4-onnx' writes captions faster still but only generates; quantization='none' gives "
            "float32")
    if _problem(AUTO_CPU_FALLBACK, device) is None:
        return AUTO_CPU_FALLBACK, (
            f"load() chose quantization={AUTO_CPU_FALLBACK!r} because {AUTO_CPU_CHOICE!r}, faster still, cannot run "
            f"here: {problem[0]}; quantization='none' gives float32")
    return "none", (f"load() kept float32, several times slower per token than quantization={AUTO_CPU_CHOICE!r}, "
                    f"which cannot run here: {problem[0]}")


def _drop_cast_notice(record: logging.LogRecord) -> bool:
    return "inputs will be cast" not in record.getMessage()


def bitsandbytes_config(quantization: str, compute_dtype):
    """The ``BitsAndBytesConfig`` of a bitsandbytes path; the 4-bit ones compute in ``compute_dtype``
    (``"4bit"`` with float32 is the article's ``BitsAndBytesConfig(load_in_4bit=True)``, bitsandbytes' defaults)."""
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "nf4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        # LLM.int8 casts float32 inputs to float16, and logs so at every call of every layer
        cast_log = logging.getLogger("bitsandbytes.autograd._functions")
        if _drop_cast_notice not in cast_log.filters:
            cast_log.addFilter(_drop_cast_notice)
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"{quantization!r} is not a bitsandbytes path; those are {', '.join(BITSANDBYTES)}")


def from_pretrained_kwargs(the_plan: Plan, device: str) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` (dtype, and for bitsandbytes its config and device map).

    ``"int8"``, ``"int4"`` and ``"int4-onnx"`` load the checkpoint in the type it is stored in (``dtype="auto"``),
    which transformers maps from disk instead of copying: :func:`quantize` then puts it in bfloat16 a layer at a time,
    and int4-onnx makes its graphs from it and puts only what stays in torch in the plan's dtype."""
    own_type = the_plan.quantization in IN_PLACE or the_plan.quantization in ONNXRUNTIME
    kwargs: dict[str, Any] = {"dtype": "auto" if own_type else the_plan.dtype}
    if the_plan.quantization in BITSANDBYTES:
        kwargs["quantization_config"] = bitsandbytes_config(the_plan.quantization,
                                                            the_plan.compute_dtype or the_plan.dtype)
        kwargs["device_map"] = {"": 0 if device == "cuda" else device}
    return kwargs


#: Loggers whose import-time warnings are about optional kernels this course does not use (torchao's
#: extensions built for other Pythons, torch's notices about the Enums torchao registers, bitsandbytes' backends).
NOISY_LOGGERS = ("torchao", "bitsandbytes", "torch.utils._pytree")


def silence_import_notices() -> None:
    """Show only errors from :data:`NOISY_LOGGERS`. ``import helpers`` calls it, so that a lesson importing
    transformers (which imports torchao when it is installed) prints nothing; it imports nothing itself."""
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_imports():
    """Import-time notices of torchao and bitsandbytes about optional kernels this course does not use."""
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def import_quietly() -> None:
    """Import bitsandbytes and torchao (those installed) once, without their import-time notices about optional
    kernels this course does not use; later imports, transformers' included, then print nothing."""
    for name in ("torchao", "bitsandbytes"):
        version = installed_version(name)
        if version is None:
            continue
        try:
            with quiet_imports():
                importlib.import_module(name)
        except Exception as err:  # a broken install, or one built for another torch or Python
            raise QuantizationError(
                f"{name} {version} is installed but does not import ({type(err).__name__}: {err}); reinstall it "
                f"(pip install --force-reinstall --no-deps {name}=={version}) or remove it (pip uninstall {name})"
            ) from err


def torchao_config(hqq: bool = False):
    """The torchao config of the int4 path: int4 weights in groups of :data:`INT4_GROUP_SIZE` for torch's CPU
    int4 kernel, with HQQ scales when ``hqq``."""
    with quiet_imports():
        try:
            from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig
        except ImportError as err:  # a torchao that moved or dropped its CPU int4 layout
            raise QuantizationError(f"this torchao ({installed_version('torchao')}) has no CPU int4 layout "
                                    f"(PrototypeInt4WeightOnlyConfig); pip install 'torchao>={MIN_TORCHAO}'") from err
    return PrototypeInt4WeightOnlyConfig(group_size=INT4_GROUP_SIZE,
                                         int4_choose_qparams_algorithm="hqq" if hqq else "tinygemm")


def int4_fits(linear) -> bool:
    """Whether torch's CPU int4 kernel takes this ``nn.Linear``: inputs a multiple of :data:`INT4_GROUP_SIZE`,
    outputs a multiple of 16."""
    return linear.in_features % INT4_GROUP_SIZE == 0 and linear.out_features % 16 == 0


def uses_hqq(model) -> bool:
    """Whether ``model``'s int4 weights get HQQ scales rather than min-max ones: it has at most
    :data:`INT4_HQQ_MAX_PARAMETERS` parameters (the rule of the int4 and int4-onnx paths alike)."""
    return sum(p.numel() for p in model.parameters()) <= INT4_HQQ_MAX_PARAMETERS


def quantize(model, quantization: str) -> dict[str, int]:
    """Quantize the ``nn.Linear`` layers of ``model`` on the CPU in place (``"int8"`` or ``"int4"``) and put the
    rest of it in bfloat16, the type these paths compute in; returns how many layers got which form.

    Layers named in :data:`KEEPS_BFLOAT16` stay in bfloat16. ``"int8"`` replaces every other layer by an
    :class:`~helpers.grounding.int8_linear.Int8Linear`. ``"int4"`` gives torchao's int4 weights to every other
    layer that torch's CPU int4 kernel takes (:func:`int4_fits`) and an ``Int8Linear`` to the rest: Kosmos-2's
    ``lm_head`` (65 037 outputs, not a multiple of 16), and the bundled model's (1 297 outputs).

    The model may come in any float type: :func:`~helpers.grounding.model.load` gives it the type its checkpoint is
    stored in, which transformers maps from disk rather than copies. The parts that stay are put in bfloat16 first,
    then each layer is put in bfloat16 just before it is quantized, so no bfloat16 copy of the whole model is ever
    made; the quantized weights are those of the model put in bfloat16 whole.
    """
    import torch

    from helpers.grounding.int8_linear import DTYPE, Int8Linear

    if quantization not in IN_PLACE:
        raise ValueError(f"quantize() takes {' or '.join(repr(q) for q in IN_PLACE)}, got {quantization!r}")
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    wrong = sorted({str(m.weight.dtype) for _, m in named if not m.weight.is_floating_point()})
    if wrong:
        raise ValueError(f"quantize() takes a model with float weights (as load() gives it); its layers are {wrong}")
    rest = [(n, m) for n, m in named if not any(part in n for part in KEEPS_BFLOAT16)]
    counts = {"bfloat16 (run once per image)": len(named) - len(rest)} if len(named) > len(rest) else {}
    int4 = [n for n, m in rest if quantization == "int4" and int4_fits(m)]
    int8 = [n for n, m in rest if quantization == "int8" or not int4_fits(m)]
    if int4:  # torchao first: a torchao that cannot do it leaves the model untouched
        with quiet_imports():
            from torchao.quantization import quantize_
        hqq = uses_hqq(model)
        config = torchao_config(hqq)
    layers = {id(m) for _, m in rest}
    for module in model.modules():  # what stays unquantized; a weight lm_head shares with the embeddings included
        if id(module) not in layers:
            _to_bfloat16(module, DTYPE)
    del named, rest  # they hold the float layers: each must go as soon as its quantized form replaces it
    if int4:
        for name in int4:
            layer = model.get_submodule(name)
            _to_bfloat16(layer, DTYPE)
            with quiet_imports():
                quantize_(layer, config)  # in place: the layer's weight becomes torchao's int4 tensor
            release_freed_memory()
        counts[f"int4 (groups of {INT4_GROUP_SIZE}, {'HQQ' if hqq else 'min-max'} scales)"] = len(int4)
    for name in int8:
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        layer = getattr(holder, child)
        _to_bfloat16(layer, DTYPE)
        setattr(holder, child, Int8Linear.from_linear(layer))
        del layer
        release_freed_memory()
    if int8:
        counts["int8 (a scale per output)"] = len(int8)
    return counts


def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library is another (macOS, Windows, musl)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # (musl's libc.so.6, if any, has no trim)
        return None


def release_freed_memory() -> None:
    """Give the memory freed so far back to the system, where the C library keeps it for reuse instead (glibc's
    ``malloc_trim``, on Linux; elsewhere nothing is done).

    Quantizing a layer frees its float weights and the temporaries of its conversion, tens of megabytes of
    different sizes each; glibc keeps such freed blocks in the process, so over the 145 layers of Kosmos-2's
    decoder the process would hold gigabytes it no longer uses (1.9 GiB besides the quantized model's 2 GiB,
    int4 on the full-size architecture), which another program, or the next step of a notebook, may need."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@contextlib.contextmanager
def releasing_freed_memory(interval: float = TRIM_INTERVAL):
    """While the block runs, hand freed memory back as :func:`release_freed_memory` does, every ``interval`` seconds
    from a thread of its own (the call leaves Python's lock, so the block runs on meanwhile); where glibc is not the
    C library, nothing.

    For conversions that happen inside another library's loop, where :func:`quantize` cannot trim after each
    layer: bitsandbytes quantizes each weight while transformers loads the checkpoint, and without trimming the
    process's peak while loading the article's 4-bit path moved between 1.2 and 5.8 GiB from run to run."""
    check_positive_number("interval", interval)  # seconds
    trim = _malloc_trim()  # looked up once, called at every tick
    if trim is None:
        yield
        return
    done = threading.Event()

    def trim_until_done() -> None:
        while not done.wait(interval):
            trim(0)

    trimmer = threading.Thread(target=trim_until_done, name="release-freed-memory", daemon=True)
    trimmer.start()
    try:
        yield
    finally:
        done.set()
        trimmer.join()


def _to_bfloat16(module, dtype) -> None:
    """Put ``module``'s own float parameters and buffers (not its children's) in ``dtype``, in place: a parameter
    keeps its identity, so a weight two layers share stays shared."""
    for _, param in module.named_parameters(recurse=False):
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    for name, buffer in module.named_buffers(recurse=False):
        if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
            setattr(module, name, buffer.to(dtype))


def logits_agreement(reference, logits) -> dict[str, float]:
    """How close ``logits`` are to ``reference`` (same shape, ``(..., vocabulary)``), e.g. a quantized model's
    against the float32 model's on the same teacher-forced tokens.

    Returns ``relative_error`` (‖logits − reference‖ / ‖reference‖ over everything) and ``top1_agreement``
    (the fraction of positions whose highest logit is the same token).
    """
    import torch

    if reference.shape != logits.shape:
        raise ValueError(f"logits of shape {tuple(logits.shape)} cannot be compared with a reference of shape "
                         f"{tuple(reference.shape)}")
    ref, out = reference.float(), logits.float()
    return {
        "relative_error": float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref)),
        "top1_agreement": float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
    }

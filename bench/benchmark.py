"""Benchmark Kosmos-2 grounding paths side by side: captions per second, milliseconds per token, memory.

The model is the full-size Kosmos-2 architecture (``Kosmos2Config()``: 1.66 B parameters) with random
weights: the same compute as ``microsoft/kosmos-2-patch14-224``, without a download. Inputs are built
directly, as the processor would lay them out for ``"<grounding> An image of"``: ``<s>``, ``<image>``, the
64 image placeholders, ``</image>`` and four prompt tokens, with random pixels. Every caption is forced
to exactly ``--new-tokens`` new tokens (``min_new_tokens = max_new_tokens``, no end-of-sequence token),
so all paths do the same work.

Paths (``--paths``, comma-separated):

* ``article`` — the article's set-up: 4-bit bitsandbytes weights with ``BitsAndBytesConfig(load_in_4bit=True)``
  and its defaults (FP4, float32 compute), the other layers in float16 on a GPU (as transformers 4 gave the
  article) and float32 on a CPU, as ``load(quantization="4bit")`` loads them; batch 1 (every ``--batch-sizes`` entry
  in the CPU table). Needs bitsandbytes (on the CPU >= 0.50.2); otherwise recorded as skipped, with the reason.
* ``nf4``, ``8bit`` — bitsandbytes' 4-bit NF4 and LLM.int8 weights, as ``load(quantization=...)`` loads them.
* ``int8``, ``int4`` — the CPU paths of ``load(quantization=...)``: int8 weights of the text decoder (a scale
  per output, torch's ``_weight_int8pack_mm``); torchao's int4 weights of the text decoder (groups of 32) with
  ``lm_head`` in int8; both with bfloat16 activations, the vision tower and the projection in bfloat16.
  ``int4-compile`` adds ``torch.compile`` of each text block; ``int4-static`` decodes with
  :class:`FixedShapeDecoder` (below), its step compiled by ``torch.compile``. CPU only.
* ``int4-onnx`` — ``load(quantization="int4-onnx")``: the text decoder as ONNX Runtime graphs, 4-bit weights
  for each new token (``MatMulNBits``, blocks of 128, ``lm_head`` in 8 bits) and 8-bit products for the prompt
  (``MatMulInteger``), the vision tower and embeddings in bfloat16 (:mod:`helpers.grounding.onnx_decoder`). CPU
  only.
* ``fp32-eager`` — float32 with the plain matmul-softmax attention: the CPU table's baseline.
* ``fp32``, ``bf16``, ``fp16`` — that precision, SDPA attention, every ``--batch-sizes`` entry.
* ``sdpa``, ``eager`` — the device's default precision (bf16 on GPUs with native bfloat16, compute
  capability 8.0 and up; fp16 on older ones such as a T4; fp32 on the CPU) with PyTorch's fused
  scaled-dot-product attention or the plain matmul-softmax one.
* ``static`` — transformers' static KV cache (``cache_implementation="static"``), which ``generate``
  compiles by itself on CUDA; batch 1 (``--static-batch-sizes``).
* ``compile`` — ``torch.compile`` of each text-decoder block (dynamic shapes, the default dynamic cache);
  batch 1 (``--static-batch-sizes``).
* ``graphs`` — :class:`FixedShapeDecoder`: greedy decoding written here, around the model's own layers.
  The prompt goes through the model as usual; its keys and values are then copied into a KV cache that
  holds every position up front, so each decode step has the same shapes and, on CUDA, is captured once as
  CUDA graphs (``torch.compile(mode="reduce-overhead")``) and replayed; on a CPU it runs uncompiled. Batch 1
  (``--static-batch-sizes``).

A path that fails (out of memory, not supported by this version of transformers) is recorded with its
error message and the run goes on. Timings exclude warm-up runs; each figure is the median of
``--repeats`` runs. The table is printed; with ``--out`` the results go to ``OUT/results.json`` and
``OUT/results.md`` when the run ends (without it, no file is written).

``--cpu-table`` measures the CPU paths (:data:`CPU_PATHS`) with ``--threads`` threads (2), each path in its own
process (so that its peak memory is its own), one warm-up of a few tokens and one timed run per batch size
(1 and 8). After each path its rows go to the ``--work`` folder, which records the settings of the run that made
it (``settings.json``): the same command with the same ``--work`` resumes an interrupted run, keeping the paths
measured there, and one with other settings is refused. ``--out`` (``results.json``, ``results.md`` and the short
``summary.md``) is written only when the run ends. It also scores each path's logits against float32's:
the float32 model's greedy 64 tokens are fed back to every path (teacher forcing) and the relative error of
the logits and the share of positions with the same top-1 token are reported. With random weights the
logits are nearly flat, so top-1 alone says little; the relative error says how far the numbers moved.

Examples::

    python bench/benchmark.py --out bench/results                  # on a GPU: the full table
    python bench/benchmark.py --tiny --out /tmp/bench             # a tiny model, seconds on a CPU
    python bench/benchmark.py --paths bf16 --batch-sizes 1,64 --new-tokens 64   # prints the table, writes no file
    python bench/benchmark.py --cpu-table --out bench/results/cpu   # the CPU table (a quarter of an hour on 2 cores)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from helpers.grounding import quantization as quant
from helpers.grounding.model import describe_device, native_bf16, parameters_from_config, pretrained
from helpers.grounding.onnx_decoder import OnnxRuntimeKosmos2

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is a folder of scripts, imported from anywhere
import report as R  # noqa: E402  (the facts of a run and the writing of its files, shared by the bench scripts)

#: How many prompt tokens follow ``</image>`` (``<grounding>``, ``▁An``, ``▁image``, ``▁of``).
PROMPT_TOKENS = 4
#: Kosmos-2's location tokens ``<patch_index_0000>`` … ``<patch_index_1023>`` close its vocabulary.
LOCATION_TOKENS = 1024


@dataclass(frozen=True)
class PathSpec:
    """One way of running generation: weights, precision, attention, cache and compilation."""

    name: str
    description: str
    quantization: str | None = None  # a name load(quantization=...) takes ("4bit", "int4" …) or None
    dtype: str | None = None  # "float32", "bfloat16", "float16"; None = the device's default precision
    attention: str = "sdpa"
    cache: str = "dynamic"  # "dynamic" or "static"
    compile: bool = False
    small_batches_only: bool = False  # run at --static-batch-sizes instead of --batch-sizes
    fixed_shape_decoder: bool = False  # FixedShapeDecoder instead of generate()
    compile_on_cpu: bool = True  # False: compile only on CUDA (the graphs path, whose point is CUDA graphs)


PATHS: dict[str, PathSpec] = {
    "article": PathSpec("article", "the article: 4-bit bitsandbytes, BitsAndBytesConfig defaults (float32 "
                        "arithmetic), the other layers in float16 on a GPU as transformers 4 gave the article, "
                        "float32 on a CPU; batch 1", quantization="4bit", small_batches_only=True),
    "fp32": PathSpec("fp32", "float32 weights, SDPA attention", dtype="float32"),
    "fp32-eager": PathSpec("fp32-eager", "float32 weights, eager (matmul + softmax) attention", dtype="float32",
                           attention="eager"),
    "nf4": PathSpec("nf4", "4-bit NF4 bitsandbytes weights, float32 compute", quantization="nf4", dtype="float32"),
    "8bit": PathSpec("8bit", "LLM.int8 bitsandbytes weights", quantization="8bit", dtype="float32"),
    "int8": PathSpec("int8", "int8 decoder weights (a scale per output, torch's _weight_int8pack_mm), bfloat16 "
                     "activations and vision tower", quantization="int8", dtype="bfloat16"),
    "int4": PathSpec("int4", "torchao int4 decoder weights (groups of 32), lm_head int8, bfloat16 activations and "
                     "vision tower",
                     quantization="int4", dtype="bfloat16"),
    "int4-compile": PathSpec("int4-compile", "int4 as above, torch.compile of each text block (dynamic shapes)",
                             quantization="int4", dtype="bfloat16", compile=True, small_batches_only=True),
    "int4-static": PathSpec("int4-static", "int4 as above, a pre-allocated KV cache and one fixed-shape decode "
                            "step compiled by torch.compile (FixedShapeDecoder)", quantization="int4",
                            dtype="bfloat16", cache="static", compile=True, small_batches_only=True,
                            fixed_shape_decoder=True),
    "int4-onnx": PathSpec("int4-onnx", "the text decoder in ONNX Runtime: 4-bit MatMulNBits weights (blocks of 128), "
                          "lm_head 8-bit, vision tower in bfloat16", quantization="int4-onnx", dtype="bfloat16"),
    "bf16": PathSpec("bf16", "bfloat16 weights, SDPA attention", dtype="bfloat16"),
    "fp16": PathSpec("fp16", "float16 weights, SDPA attention", dtype="float16"),
    "sdpa": PathSpec("sdpa", "default precision, SDPA attention"),
    "eager": PathSpec("eager", "default precision, eager (matmul + softmax) attention", attention="eager"),
    "static": PathSpec("static", "default precision, transformers' static KV cache (generate compiles it on CUDA)",
                       cache="static", small_batches_only=True),
    "compile": PathSpec("compile", "default precision, torch.compile of each text block (dynamic shapes)",
                        compile=True, small_batches_only=True),
    "graphs": PathSpec("graphs", "default precision, a pre-allocated KV cache and one fixed-shape decode step, "
                       "captured as CUDA graphs (torch.compile mode='reduce-overhead') on a GPU",
                       cache="static", compile=True, small_batches_only=True, fixed_shape_decoder=True,
                       compile_on_cpu=False),
}
DEFAULT_PATHS = ("article", "fp32", "bf16", "fp16", "eager", "static", "compile", "graphs")
#: ``--tiny`` leaves out ``compile``: compiling takes minutes on a CPU, which is not what --tiny is for
#: (``graphs`` compiles only on CUDA, so it stays).
DEFAULT_TINY_PATHS = ("article", "fp32", "bf16", "eager", "static", "graphs")
#: The CPU table (``--cpu-table``): the baseline first, it also records the reference logits.
CPU_PATHS = ("fp32-eager", "fp32", "bf16", "article", "nf4", "8bit", "int8", "int4", "compile", "int4-compile",
             "int4-static", "int4-onnx")
#: ``--cpu-table --tiny`` (for tests): every kind of path, compiling once.
CPU_TINY_PATHS = ("fp32-eager", "fp32", "article", "nf4", "8bit", "int8", "int4", "int4-compile", "int4-static",
                  "int4-onnx")
#: The paths the CPU table's ratios are taken against.
BASELINE, ARTICLE = "fp32-eager", "article"


# --------------------------------------------------------------------------------------------- set-up


def full_config():
    """The full-size Kosmos-2 configuration (``Kosmos2Config()`` defaults, as in microsoft/kosmos-2-patch14-224)."""
    from transformers import Kosmos2Config

    return Kosmos2Config()


def tiny_config():
    """A tiny Kosmos-2 with the real vocabulary, image size and 64 image tokens, for tests: a few new tokens at
    small batches run on a CPU in seconds (every step still scores the real vocabulary)."""
    from transformers import Kosmos2Config

    return Kosmos2Config(
        text_config=dict(embed_dim=64, layers=2, ffn_dim=256, attention_heads=4),
        # bitsandbytes' CPU 4-bit kernel needs inner sizes of at least 64
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
        latent_query_num=64,
    )


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> list[int]:
    """``"1,8,64"`` → ``[1, 8, 64]``; a clear ``ValueError`` for anything else."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{option} needs comma-separated positive integers like 1,8,64, got {text!r}")
    sizes = []
    for p in parts:
        if not p.isdigit() or int(p) < 1:
            raise ValueError(f"{option} needs comma-separated positive integers like 1,8,64; {p!r} is not one")
        sizes.append(int(p))
    return list(dict.fromkeys(sizes))


def resolve_dtype(spec: PathSpec, device: str) -> torch.dtype:
    """The dtype a path runs in on ``device``: the path's own, else what ``load()`` gives its quantization there
    (:func:`helpers.grounding.quantization.default_dtype_for`: without quantization bf16 on GPUs that compute in
    it natively, fp16 on other GPUs such as a T4, fp32 on the CPU; the article's 4-bit fp16 on a GPU)."""
    return getattr(torch, spec.dtype) if spec.dtype else quant.default_dtype_for(spec.quantization, device)


def skip_reason(spec: PathSpec, device: str) -> str | None:
    """Why a path cannot run here (``None`` when it can)."""
    if spec.quantization:
        try:
            quant.check_available(spec.quantization, device)
        except quant.QuantizationError as err:
            return str(err)
    if spec.dtype == "bfloat16" and device.startswith("cuda") and not native_bf16(device):
        return "this GPU has no native bfloat16 arithmetic (it would only be emulated); use fp16"
    return None


def save_random_weights(config, folder: str | os.PathLike, seed: int = 0) -> None:
    """The random float32 weights every path starts from (seeded), saved with ``save_pretrained``."""
    from transformers import Kosmos2ForConditionalGeneration

    torch.manual_seed(seed)
    Kosmos2ForConditionalGeneration(config).save_pretrained(folder)


def build_model(config, spec: PathSpec, device: str, seed: int = 0, weights: str | os.PathLike | None = None):
    """A random-weight ``Kosmos2ForConditionalGeneration`` for ``spec`` on ``device``, in eval mode.

    With a ``weights`` folder (of :func:`save_random_weights`; the CPU table has one) every path loads the
    random float32 weights from it as ``load(quantization=...)`` loads the real checkpoint
    (:func:`helpers.grounding.model.pretrained`): in the path's dtype, with the ``BitsAndBytesConfig`` of
    bitsandbytes paths (as the article does); int8, int4 and int4-onnx in the checkpoint's own float32, then
    quantized a layer at a time for int8 and int4 (:func:`quant.quantize`: torch's int8 kernel, torchao's int4)
    or made into graphs for int4-onnx, whose torch parts then take the path's dtype. On a CPU the memory freed
    meanwhile goes back to the system, as with ``load()``. Without one, bitsandbytes
    paths save the seeded model to a temporary folder first and the other paths build it in memory (the same
    weights in every process).
    """
    from transformers import Kosmos2ForConditionalGeneration

    torch.manual_seed(seed)
    if spec.quantization in quant.BITSANDBYTES or weights is not None:
        # the path's own dtype, else load()'s default for it (for the article's 4-bit: float32 arithmetic too)
        plan = quant.plan(spec.quantization or "none", device, getattr(torch, spec.dtype) if spec.dtype else None, None)
        with contextlib.ExitStack() as stack:
            if weights is None:
                weights = stack.enter_context(tempfile.TemporaryDirectory(prefix="kosmos2-bench-"))
                save_random_weights(config, weights, seed)
            with quant.quiet_imports():  # bitsandbytes places the weights on ``device`` itself (its device_map)
                model = pretrained(weights, plan, device)
        if spec.quantization not in quant.BITSANDBYTES:  # bitsandbytes placed the weights already
            model = model.to(device)
        if spec.quantization in quant.IN_PLACE:  # as load() does: the float weights, quantized a layer at a time
            quant.quantize(model, spec.quantization)
    else:
        with torch.device(device):
            model = Kosmos2ForConditionalGeneration(config)
        model = model.to(resolve_dtype(spec, device))
        if spec.quantization in quant.IN_PLACE:
            quant.quantize(model, spec.quantization)
    model.eval()
    model.set_attn_implementation(spec.attention)
    model.generation_config.eos_token_id = None  # every caption runs to the forced length
    if spec.quantization in quant.ONNXRUNTIME:  # as load() does: the float model's decoder becomes the graph
        # a benchmark leaves no graph on disk; what stays in torch takes the path's dtype, as load() gives it
        model = OnnxRuntimeKosmos2(model, cache=False, dtype=resolve_dtype(spec, device))
    elif compiles(spec, device) and not spec.fixed_shape_decoder:
        for block in model.text_model.model.layers:
            block.compile(dynamic=True)
    if not device.startswith("cuda"):
        quant.release_freed_memory()  # what loading and converting freed, as load() hands it back
    return model


def compiles(spec: PathSpec, device: str) -> bool:
    """Whether ``spec`` compiles anything on ``device``."""
    return spec.compile and (spec.compile_on_cpu or device.startswith("cuda"))


class FixedShapeDecoder:
    """Greedy decoding for Kosmos-2 whose decode step always has the same shapes (for CUDA graphs, and for a
    compiled step on a CPU).

    ``generate()`` grows the KV cache by one position per step, so every step has new shapes, and
    transformers' static cache does not work with Kosmos-2 (its attention mask is built for the positions
    seen so far, not for the whole cache). Here the prompt runs through the model once as usual; its keys
    and values are copied into a ``StaticCache`` sized for prompt + new tokens, and each step feeds one
    token per caption through the text model's layers with an additive mask over the whole cache. Position
    numbers count the real (not padded) tokens of each row. Greedy tokens equal ``generate()``'s for
    unpadded prompts (checked by the tests with the bundled model, uncompiled in float32 and compiled in int4).

    With ``compile_step=True`` the step is compiled by ``torch.compile``: on CUDA with
    ``mode="reduce-overhead"``, which records it as CUDA graphs after warm-up and replays them (no Python or
    kernel-launch cost per layer); on a CPU Inductor fuses the small operations between the weight products
    into C++ kernels and the cache is written in place, where ``generate()`` concatenates it at every step.
    Each new (batch, prompt + new tokens) shape compiles once more.
    """

    def __init__(self, model, compile_step: bool = False):
        self.model = model
        self._caches: dict[tuple[int, int], Any] = {}
        self.step = self._step
        if compile_step:
            cuda = next(model.parameters()).device.type == "cuda"
            self.step = torch.compile(self._step, mode="reduce-overhead" if cuda else "default")

    def _step(self, token_ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache) -> torch.Tensor:
        """Logits of the next token for one new token per row (``token_ids``: (batch, 1))."""
        text = self.model.text_model.model
        hidden = text.embed_tokens(token_ids) * text.embed_scale
        hidden = hidden + text.embed_positions.weights.index_select(0, positions.view(-1)).view(*hidden.shape)
        for block in text.layers:
            hidden = block(hidden, mask, cache=cache, use_cache=True)
        # lm_head on the last position only, (batch, hidden)
        return self.model.text_model.lm_head(text.layer_norm(hidden)[:, -1])

    def generate(self, inputs: dict[str, torch.Tensor], new_tokens: int) -> torch.Tensor:
        """Prompt ids followed by ``new_tokens`` greedy tokens, shape (batch, prompt + new_tokens)."""
        from transformers import StaticCache

        model = self.model
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        batch, prompt = ids.shape
        total = prompt + new_tokens
        out = model(**inputs, use_cache=True)
        token = out.logits[:, -1].argmax(-1)
        tokens = [token]
        key = (batch, total)
        cache = self._caches.get(key)
        if cache is None:  # one cache per shape, reused: CUDA graphs replay on the same memory
            cache = self._caches[key] = StaticCache(config=model.config.text_config, max_cache_len=total)
        else:
            cache.reset()
        for index, layer in enumerate(out.cache.layers):
            cache.update(layer.keys, layer.values, index)
        dtype = out.logits.dtype
        valid = torch.zeros(batch, total, dtype=torch.bool, device=ids.device)
        valid[:, :prompt] = attention.bool()
        padding = model.text_model.model.embed_positions.padding_idx
        for t in range(new_tokens - 1):
            valid[:, prompt + t] = True
            positions = valid.sum(-1, keepdim=True) + padding  # Kosmos-2 numbers real tokens from padding + 1
            mask = torch.zeros(batch, 1, 1, total, dtype=dtype, device=ids.device)
            mask = mask.masked_fill(~valid[:, None, None, :], torch.finfo(dtype).min)
            token = self.step(token[:, None], positions, mask, cache).argmax(-1)
            tokens.append(token)
        return torch.cat([ids, torch.stack(tokens, dim=1)], dim=1)


def make_inputs(config, batch_size: int, device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs laid out as the processor lays out ``"<grounding> An image of"``, with random pixels.

    ``input_ids`` = ``<s>``, ``<image>``, the image placeholders (ids ``unk + 1`` … as the processor uses),
    ``</image>``, then :data:`PROMPT_TOKENS` prompt ids. The ids of the tags and prompt words are stand-ins
    taken just below the location tokens; their values do not change the compute.
    """
    text = config.text_config
    n_image = config.latent_query_num
    top = text.vocab_size - LOCATION_TOKENS  # first location token
    boi, eoi = top - 12, top - 11
    prompt = [top - 1] + [top - 100 - k for k in range(PROMPT_TOKENS - 1)]
    first_image_id = 4  # the processor's default: the tokenizer's unk id (3) + 1
    row = [text.bos_token_id, boi, *range(first_image_id, first_image_id + n_image), eoi, *prompt]
    ids = torch.tensor([row] * batch_size, device=device)
    image_mask = torch.zeros_like(ids)
    image_mask[:, 2:2 + n_image] = 1
    size = config.vision_config.image_size
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch_size, 3, size, size, generator=generator).to(device=device, dtype=dtype)
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "image_embeds_position_mask": image_mask}


def generation_config(config, new_tokens: int, cache: str):
    """Greedy decoding of exactly ``new_tokens`` tokens (no end-of-sequence stop)."""
    from transformers import GenerationConfig

    text = config.text_config
    kwargs: dict[str, Any] = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  num_beams=1, use_cache=True, pad_token_id=text.pad_token_id,
                                  bos_token_id=text.bos_token_id, eos_token_id=None)
    if cache == "static":
        kwargs["cache_implementation"] = "static"
    return GenerationConfig(**kwargs)


# --------------------------------------------------------------------------------------------- measuring


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


#: What ``peak_memory_gib`` is on a CPU where :class:`report.MemoryPeaks` can read the process's memory.
PRIVATE_PEAK = ("private memory (RssAnon, sampled every 50 ms): load GiB while the path is built, run GiB while it "
                "generates")


def _reset_peak(device: str, peaks: R.MemoryPeaks | None = None) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    elif peaks is not None:
        peaks.reset()


def peak_memory(device: str, peaks: R.MemoryPeaks | None = None) -> tuple[float | None, str]:
    """``(GiB, what)``: the GPU's (``device``'s) peak allocated memory since the last reset; on a CPU the peak
    private memory ``peaks`` sampled since its last reset, or without ``peaks`` the process's peak RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**30, "torch.cuda.max_memory_allocated"
    if peaks is not None:
        return peaks.gib("RssAnon"), PRIVATE_PEAK
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None, "unavailable on this platform"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    return rss_bytes / 2**30, "process peak RSS (ru_maxrss, whole run so far)"


def measure(model, inputs: dict[str, torch.Tensor], gen_config, *, new_tokens: int, warmup: int, repeats: int,
            device: str, decoder: FixedShapeDecoder | None = None, warmup_config=None,
            peaks: R.MemoryPeaks | None = None) -> dict[str, Any]:
    """Time generation (median of ``repeats`` after ``warmup`` runs) and one prefill forward pass.

    Generation is ``model.generate`` with ``gen_config``, or ``decoder.generate`` when a decoder is given.
    Warm-up runs use ``warmup_config`` when given (fewer tokens: the CPU table's warm-up only has to touch
    every kind of step once). The result's ``output`` holds the token ids of the last timed run, its
    ``warmup_seconds`` what the warm-up took (compiling included), its ``peak_memory_gib`` the peak of the timed
    runs and prefills (:func:`peak_memory`; ``peaks``: the CPU's sampler).
    """
    prompt_len = inputs["input_ids"].shape[1]
    batch = inputs["input_ids"].shape[0]
    last: list[torch.Tensor] = []

    def generate(config=gen_config) -> float:
        tokens = config.max_new_tokens
        _sync(device)
        start = time.perf_counter()
        if decoder is not None:
            out = decoder.generate(inputs, tokens)
        else:
            out = model.generate(**inputs, generation_config=config)
        _sync(device)
        seconds = time.perf_counter() - start
        if tuple(out.shape) != (batch, prompt_len + tokens):
            raise RuntimeError(f"expected output shape {(batch, prompt_len + tokens)}, got {tuple(out.shape)}")
        last[:] = [out]
        return seconds

    def prefill() -> float:
        _sync(device)
        start = time.perf_counter()
        if isinstance(model, OnnxRuntimeKosmos2):  # it has no forward: image and prompt up to the first logits
            model.first_logits(**inputs)
        else:
            model(**inputs, use_cache=False)
        _sync(device)
        return time.perf_counter() - start

    with torch.inference_mode():
        start = time.perf_counter()
        for _ in range(warmup):
            generate(warmup_config or gen_config)
            prefill()
        warmup_s = time.perf_counter() - start
        _reset_peak(device, peaks)
        runs = [generate() for _ in range(repeats)]
        prefills = [prefill() for _ in range(repeats)]
    seconds = statistics.median(runs)
    prefill_s = statistics.median(prefills)
    memory, memory_kind = peak_memory(device, peaks)
    decode = (seconds - prefill_s) / (new_tokens - 1) * 1000 if new_tokens > 1 else None
    return {
        "seconds": seconds,
        "runs": runs,
        "warmup_seconds": warmup_s,  # compiling included, for the compiled paths
        "captions_per_s": batch / seconds,
        "ms_per_token": seconds / new_tokens * 1000,
        "prefill_ms": prefill_s * 1000,
        "decode_ms_per_token": decode if decode is None or decode > 0 else None,
        "peak_memory_gib": memory,
        "memory_kind": memory_kind,
        "output": last[0],
    }


def _error_text(err: BaseException, limit: int = 300) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    text = f"{type(err).__name__}: {first}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    else:  # what was freed goes back to the system, so that it is not counted in the next private peak
        quant.release_freed_memory()


def storage_gib(model) -> float:
    """GiB the model's parameters and buffers really occupy: the inner tensors of quantized tensor subclasses
    (torchao's) count by their own size (``get_memory_footprint`` counts them as float), and an ONNX Runtime
    graph's weights by theirs."""

    def nbytes(t) -> int:
        if hasattr(t, "__tensor_flatten__"):
            names, _ = t.__tensor_flatten__()
            return sum(nbytes(getattr(t, n)) for n in names)
        return t.numel() * t.element_size()

    seen: set[int] = set()
    total = getattr(model, "weight_bytes", 0)  # an ONNX Runtime graph's weights
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += nbytes(t)
    return total / 2**30


def teacher_forced_logits(model, inputs: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """The logits ``model`` gives to each token after the prompt when ``ids`` (prompt + new tokens) are fed in."""
    prompt = inputs["input_ids"].shape[1]
    if isinstance(model, OnnxRuntimeKosmos2):
        return model.teacher_forced_logits(inputs, ids)
    mask = torch.nn.functional.pad(inputs["image_embeds_position_mask"], (0, ids.shape[1] - prompt))
    with torch.inference_mode():
        out = model(pixel_values=inputs["pixel_values"], input_ids=ids, attention_mask=torch.ones_like(ids),
                    image_embeds_position_mask=mask, use_cache=False)
    return out.logits[:, prompt - 1:-1].float()


def run_paths(config, paths: Sequence[str], *, batch_sizes: Sequence[int], small_batch_sizes: Sequence[int],
              new_tokens: int, warmup: int, repeats: int, device: str, log=print, warmup_tokens: int | None = None,
              work: Path | None = None) -> list[dict[str, Any]]:
    """Measure every path at its batch sizes; one result row per (path, batch size), failures included.

    On a CPU that reports its processes' private memory (Linux), each row has the path's peak private memory while
    it was built (``load_peak_gib``) and while it generated at that batch size (``peak_memory_gib``), sampled by
    :class:`report.MemoryPeaks`; elsewhere ``peak_memory_gib`` is what :func:`peak_memory` says.

    With a ``work`` folder (the CPU table), every path loads the random weights saved there, the first
    float32 path stores its batch-1 tokens and teacher-forced logits there as the reference, and every later
    path's batch-1 row gets ``accuracy`` (:func:`quant.logits_agreement` against that reference).
    """
    sampled = not device.startswith("cuda") and R.MemoryPeaks.available()
    with R.MemoryPeaks() if sampled else contextlib.nullcontext() as peaks:
        return [row for name in paths for row in _run_path(
            config, name, batch_sizes=batch_sizes, small_batch_sizes=small_batch_sizes, new_tokens=new_tokens,
            warmup=warmup, repeats=repeats, device=device, log=log, warmup_tokens=warmup_tokens, work=work,
            peaks=peaks)]


def _run_path(config, name: str, *, batch_sizes: Sequence[int], small_batch_sizes: Sequence[int], new_tokens: int,
              warmup: int, repeats: int, device: str, log, warmup_tokens: int | None, work: Path | None,
              peaks: R.MemoryPeaks | None) -> list[dict[str, Any]]:
    """One path of :func:`run_paths`: its rows."""
    rows: list[dict[str, Any]] = []
    spec = PATHS[name]
    # the CPU table (a work folder) runs every path but the compiled ones at every batch size
    small = spec.small_batches_only and (work is None or spec.compile or spec.cache == "static")
    sizes = small_batch_sizes if small else batch_sizes
    dtype = resolve_dtype(spec, device)
    dtype_name = str(dtype).replace("torch.", "")
    compiled = compiles(spec, device)
    base = {"path": name, "description": spec.description, "quantization": spec.quantization,
            "dtype": f"{spec.quantization} + {dtype_name}" if spec.quantization else dtype_name,
            "attention": spec.attention, "cache": spec.cache,
            # the fixed-shape decoder compiles its step on CUDA only
            "compile": compiled}
    reason = skip_reason(spec, device)
    if reason:
        log(f"{name}: skipped — {reason}")
        rows.extend({**base, "batch_size": b, "status": "skipped", "reason": reason} for b in sizes)
        return rows
    try:
        _free(device)
        _reset_peak(device, peaks)  # this path's load peak, not what an earlier path left
        start = time.perf_counter()
        weights_dir = work / "weights" if work is not None else None
        model = build_model(config, spec, device, weights=weights_dir)
        weights = storage_gib(model)
        load_peak = peaks.gib("RssAnon") if peaks is not None else None
        log(f"{name}: model ready in {time.perf_counter() - start:.1f} s ({weights:.2f} GiB of weights)")
    except Exception as err:  # recorded, the other paths still run
        reason = _error_text(err)
        log(f"{name}: could not build the model — {reason}")
        rows.extend({**base, "batch_size": b, "status": "error", "reason": reason} for b in sizes)
        _free(device)
        return rows
    for b in sizes:
        row = {**base, "batch_size": b, "weights_gib": weights, "load_peak_gib": load_peak}
        try:
            inputs = make_inputs(config, b, device, dtype)
            gen = generation_config(config, new_tokens, spec.cache)
            warm = generation_config(config, min(warmup_tokens, new_tokens), spec.cache) if warmup_tokens else None
            decoder = None
            if spec.fixed_shape_decoder:
                decoder = FixedShapeDecoder(model, compile_step=compiled)
                if compiled:
                    warm = None  # a shorter warm-up has another cache size: its compiled step would not serve
            load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            result = measure(model, inputs, gen, new_tokens=new_tokens, decoder=decoder, warmup_config=warm,
                             warmup=max(warmup, 2) if compiled else warmup, repeats=repeats,
                             device=device, peaks=peaks)
            output = result.pop("output")
            row.update(status="ok", reason=None, **result)
            if load_before is not None:
                row["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            if work is not None and b == 1:
                row["accuracy"] = _accuracy(model, inputs, output, work, spec, log)
            log(f"{name} batch {b}: {result['captions_per_s']:.2f} captions/s, "
                f"{result['ms_per_token']:.2f} ms per token step (warm-up {result['warmup_seconds']:.1f} s)")
        except Exception as err:  # out of memory, unsupported cache …: recorded, the run goes on
            row.update(status="error", reason=_error_text(err))
            log(f"{name} batch {b}: error — {row['reason']}")
        rows.append(row)
        _free(device)
    del model
    _free(device)
    return rows


def _accuracy(model, inputs, output: torch.Tensor, work: Path, spec: PathSpec, log) -> dict[str, Any] | None:
    """Teacher-forced agreement with the reference float32 path (which this path becomes if there is none)."""
    reference = work / "reference.pt"
    if not reference.exists():
        if spec.quantization or resolve_dtype(spec, "cpu") != torch.float32:
            return None  # no float32 path ran first: nothing to compare with
        torch.save({"path": spec.name, "ids": output[:1].cpu(),
                    "logits": teacher_forced_logits(model, inputs, output[:1])}, reference)
        return {"reference": True}
    saved = torch.load(reference)
    logits = teacher_forced_logits(model, inputs, saved["ids"].to(inputs["input_ids"].device))
    result = {"against": saved["path"], **quant.logits_agreement(saved["logits"], logits.cpu())}
    log(f"{spec.name}: logits relative error {result['relative_error']:.4f}, "
        f"top-1 agreement {result['top1_agreement']:.3f} against {saved['path']}")
    return result


def run_isolated(argv: Sequence[str], paths: Sequence[str], work: Path, log=print) -> list[dict[str, Any]]:
    """Run each path in its own process (this script with ``--child``), so each peak memory is that path's own.

    Each process writes its rows to ``work/PATH.json``; a path whose file is there already (an earlier run with
    the same ``work`` folder and settings) is kept, not run again. A process that fails gives one error row and
    no file, so that the next run tries that path again."""
    rows: list[dict[str, Any]] = []
    if paths and not (work / "weights" / "config.json").exists():  # the random float32 weights every path loads
        log("saving the random float32 weights every path loads")
        subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--save-weights",
                        str(work / "weights")], check=True)
    for name in paths:
        out = work / f"{name}.json"
        if out.exists():  # measured by an earlier, interrupted run with the same work folder
            log(f"{name}: measured earlier in {work}, kept")
            rows.extend(json.loads(out.read_text(encoding="utf-8")))
            continue
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--paths", name, "--child", str(out),
                   "--work", str(work)]
        done = subprocess.run(command, text=True, capture_output=True)
        for line in done.stdout.splitlines():
            log(line)
        if done.returncode == 0 and out.exists():
            rows.extend(json.loads(out.read_text(encoding="utf-8")))
        else:  # killed (out of memory) or crashed: one error row per batch size it would have run
            reason = R.process_failure(done)
            log(f"{name}: error — {reason}")
            rows.append({"path": name, "description": PATHS[name].description, "batch_size": None,
                         "status": "error", "reason": reason, "quantization": PATHS[name].quantization,
                         "dtype": "–", "attention": PATHS[name].attention, "cache": PATHS[name].cache,
                         "compile": PATHS[name].compile})
    return rows


# --------------------------------------------------------------------------------------------- reporting


def device_name(device: str) -> str:
    """The name of the GPU ``device``, or the CPU's model and thread count."""
    return describe_device(device) if device.startswith("cuda") else R.cpu_name()


def model_support() -> dict[str, Any]:
    """What this transformers version declares for Kosmos-2 (class attributes; absent ones say so)."""
    from transformers import Kosmos2ForConditionalGeneration as K

    out: dict[str, Any] = {}
    for attr in ("_supports_sdpa", "_supports_flash_attn", "_supports_flex_attn", "_can_compile_fullgraph",
                 "_supports_static_cache", "_supports_attention_backend"):
        out[attr] = getattr(K, attr) if hasattr(K, attr) else "not defined in this transformers version"
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each measured row's speed-up per token over :data:`BASELINE` and :data:`ARTICLE` at the same batch size
    (``None`` where that path was not measured)."""
    seconds = {(r["path"], r["batch_size"]): r["seconds"] for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] == "ok":
            for key, other in (("vs_fp32_eager", BASELINE), ("vs_article", ARTICLE)):
                base = seconds.get((other, r["batch_size"]))
                r[key] = base / r["seconds"] if base else None


def weights_setting(tiny: bool) -> dict[str, str]:
    """The setting a ``--work`` folder's random weights depend on, as its ``settings.json`` records it
    (``profile_step.py`` loads the same weights)."""
    return {"model": "tiny (--tiny)" if tiny else "full size"}


def build_report(rows: list[dict[str, Any]], *, config, tiny: bool, new_tokens: int, warmup: int, repeats: int,
                 device: str, facts: dict[str, Any], warmup_tokens: int | None = None) -> dict[str, Any]:
    """Everything ``results.json`` holds: ``facts`` (:func:`report.run_facts`, bench/report.py), then the run's own."""
    add_ratios(rows)
    return {
        **facts,
        "device": device,
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "model": {
            "config": "tiny (--tiny)" if tiny else "full size, Kosmos2Config() defaults",
            "parameters": parameters_from_config(config),
            "weights": "random (same architecture and compute, no download)",
        },
        "new_tokens": new_tokens,
        "prompt_tokens": 3 + config.latent_query_num + PROMPT_TOKENS,
        "warmup_runs": warmup,
        "warmup_tokens": min(warmup_tokens, new_tokens) if warmup_tokens else new_tokens,
        "timed_runs": repeats,
        "support": model_support(),
        "results": rows,
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(report: dict[str, Any]) -> str:
    """``results.md``: the conditions, then one table row per (path, batch size)."""
    model = report["model"]
    size = model["parameters"]
    size_text = f"{size / 1e9:.2f} B" if size >= 1e9 else f"{size / 1e6:.1f} M"
    memory_kinds = sorted({r["memory_kind"] for r in report["results"] if r.get("memory_kind")})
    lines = [
        "# Kosmos-2 grounding benchmark",
        "",
        f"- date: {report['date']}",
        f"- device: {report['device_name']} ({report['device']})",
        f"- torch {report['torch']}, transformers {report['transformers']}, "
        + "".join(f"{k} {v}, " for k, v in report.get("libraries", {}).items() if v)
        + f"Python {report['python']}, {report.get('threads', '?')} torch threads",
        f"- command: `{report['command']}`",
        f"- model: {model['config']}, {size_text} parameters, {model['weights']}",
        f"- {report['new_tokens']} forced new tokens per caption after a {report['prompt_tokens']}-token prompt; "
        f"{report['warmup_runs']} warm-up run(s) of {report.get('warmup_tokens', report['new_tokens'])} tokens "
        f"left out, median of {report['timed_runs']} timed run(s)",
        "- ms/token = wall time of one `generate` call ÷ new tokens (one step makes a token for every image "
        "of the batch); prefill = one forward pass over image and prompt; decode ms/token = (generate − prefill) "
        "÷ (new tokens − 1), an estimate",
        f"- memory: {', '.join(memory_kinds) or 'not measured'}",
        "",
        f"- × {BASELINE} / × {ARTICLE}: how many times faster per token than that path at the same batch size; "
        "logits error and top-1: teacher-forced against the float32 reference (batch 1)",
        "",
        "| path | weights | attention | cache | compile | batch | captions/s | ms/token | prefill ms | "
        f"decode ms/token | weights GiB | load GiB | run GiB | × {BASELINE} | × {ARTICLE} | logits error | top-1 | "
        "status |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        ok = r["status"] == "ok"
        accuracy = r.get("accuracy") or {}
        ratio = lambda key: f"{r[key]:.2f}×" if ok and r.get(key) else "–"  # noqa: E731
        lines.append("| " + " | ".join([
            r["path"], r["dtype"], r["attention"], r["cache"], "yes" if r["compile"] else "no", _fmt(r["batch_size"]),
            _fmt(r.get("captions_per_s")) if ok else "–", _fmt(r.get("ms_per_token")) if ok else "–",
            _fmt(r.get("prefill_ms"), 1) if ok else "–", _fmt(r.get("decode_ms_per_token")) if ok else "–",
            _fmt(r.get("weights_gib")) if ok else "–", _fmt(r.get("load_peak_gib")) if ok else "–",
            _fmt(r.get("peak_memory_gib")) if ok else "–",
            ratio("vs_fp32_eager"), ratio("vs_article"),
            "reference" if accuracy.get("reference") else _fmt(accuracy.get("relative_error"), 4),
            _fmt(accuracy.get("top1_agreement"), 3), r["status"],
        ]) + " |")
    notes = [r for r in report["results"] if r["status"] != "ok"]
    seen: set[tuple[str, str]] = set()
    if notes:
        lines += ["", "Not measured:", ""]
        for r in notes:
            key = (r["path"], r["reason"])
            if key not in seen:
                seen.add(key)
                lines.append(f"- `{r['path']}` ({r['status']}): {r['reason']}")
    lines += ["", "What this transformers version declares for Kosmos-2:", ""]
    lines += [f"- `{k}`: {v}" for k, v in report["support"].items()]
    return "\n".join(lines) + "\n"


def cpu_summary(report: dict[str, Any], small: int = 1, large: int = 8) -> str:
    """The CPU table in short (``summary.md``): one row per path, seconds per token at batch ``small``,
    captions per second at batch ``large``, the path's peak memory while it was built (*load GiB*) and while it
    generated at any batch size (*run GiB*), the speed-ups and the logits' agreement."""
    rows: dict[str, dict[int | None, dict]] = {}
    for r in report["results"]:
        rows.setdefault(r["path"], {})[r["batch_size"]] = r
    lines = [f"| path | weights | s/token, batch {small} | captions/s, batch {large} | load GiB | run GiB | "
             f"× {BASELINE} | × {ARTICLE} | logits error | top-1 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for path, by_batch in rows.items():
        one, many = by_batch.get(small) or {}, by_batch.get(large) or {}
        ok_one, ok_many = one.get("status") == "ok", many.get("status") == "ok"
        if not (ok_one or ok_many):
            lines.append(f"| {path} | – | – | – | – | – | – | – | – | – |")
            continue
        first = one if ok_one else many
        accuracy = one.get("accuracy") or {}
        measured = [r for r in by_batch.values() if r.get("status") == "ok"]
        peaks = [r["peak_memory_gib"] for r in measured if r.get("peak_memory_gib") is not None]
        lines.append("| " + " | ".join([
            path, first["dtype"], _fmt(one["seconds"] / report["new_tokens"], 3) if ok_one else "–",
            _fmt(many.get("captions_per_s"), 3) if ok_many else "–", _fmt(first.get("load_peak_gib")),
            _fmt(max(peaks) if peaks else None),
            f"{one['vs_fp32_eager']:.2f}×" if ok_one and one.get("vs_fp32_eager") else "–",
            f"{one['vs_article']:.2f}×" if ok_one and one.get("vs_article") else "–",
            "reference" if accuracy.get("reference") else _fmt(accuracy.get("relative_error"), 4),
            _fmt(accuracy.get("top1_agreement"), 3),
        ]) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: Path, summary: bool = False) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.md`` (and with ``summary`` the CPU table's ``summary.md``) into
    ``out``, all at once; return the first two paths."""
    files = {"results.json": results, "results.md": to_markdown(results)}
    if summary:
        files["summary.md"] = cpu_summary(results)
    json_path, md_path, *_ = R.write(out, files)
    return json_path, md_path


# --------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python bench/benchmark.py``."""
    parser = argparse.ArgumentParser(
        prog="python bench/benchmark.py",
        description="Benchmark Kosmos-2 grounding paths (full-size architecture, random weights).",
    )
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny model for tests (its vocabulary is the real one, so "
                             "keep --new-tokens and --batch-sizes small for a quick run)")
    parser.add_argument("--cpu-table", action="store_true",
                        help="the CPU table: CPU paths, each in its own process, --threads threads, batch 1 and 8, "
                             "one short warm-up and one timed run, logits scored against float32")
    parser.add_argument("--out", default=None,
                        help="folder for results.json and results.md (with --cpu-table summary.md too), written "
                             "when the run ends; without it the table is printed and no file is written")
    parser.add_argument("--new-tokens", type=int, default=64, metavar="N", help="forced new tokens per caption (64)")
    parser.add_argument("--batch-sizes", default=None,
                        help="batch sizes for the precision paths (1,8,64; CPU table 1,8)")
    parser.add_argument("--static-batch-sizes", default="1", help="batch sizes for article, static, compile (1)")
    parser.add_argument("--paths", default=None,
                        help=f"comma-separated, from {', '.join(PATHS)} (default {','.join(DEFAULT_PATHS)}; "
                             f"with --tiny {','.join(DEFAULT_TINY_PATHS)}; with --cpu-table {','.join(CPU_PATHS)})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (1; compile uses at least 2)")
    parser.add_argument("--warmup-tokens", type=int, default=None, metavar="N",
                        help="new tokens of each warm-up run (default --new-tokens; CPU table 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs; the median is reported (3; CPU table 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default torch's; CPU table 2)")
    parser.add_argument("--device", default=None, help="cuda, cpu … (default: a CUDA GPU when there is one)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)  # one path of --cpu-table
    parser.add_argument("--work", default=None,
                        help="with --cpu-table: a folder that keeps the random weights, each path's results and "
                             "the run's settings; paths already measured there are kept, not run again (resumes an "
                             "interrupted run); a run with other settings is refused")
    parser.add_argument("--save-weights", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; returns the exit code, 0. Bad options exit with status 2 (``parser.error`` raises
    ``SystemExit``) before anything is measured."""
    parser = build_parser()
    args = parser.parse_args(argv)
    table = args.cpu_table
    if table:
        if args.device not in (None, "cpu"):
            parser.error("--cpu-table runs on the CPU; leave --device out")
        args.device = "cpu"
        args.batch_sizes = args.batch_sizes or "1,8"
        args.repeats = 1 if args.repeats is None else args.repeats
        args.threads = 2 if args.threads is None else args.threads
        args.warmup_tokens = 4 if args.warmup_tokens is None else args.warmup_tokens
    elif args.work is not None:
        parser.error("--work keeps the CPU table's weights and results: it goes with --cpu-table")
    default_paths = (CPU_TINY_PATHS if args.tiny else CPU_PATHS) if table else (
        DEFAULT_TINY_PATHS if args.tiny else DEFAULT_PATHS)
    paths = R.names(parser, "--paths", args.paths, tuple(PATHS)) if args.paths else list(default_paths)
    try:
        batch_sizes = parse_batch_sizes(args.batch_sizes or "1,8,64")
        small_sizes = parse_batch_sizes(args.static_batch_sizes, "--static-batch-sizes")
        repeats = 3 if args.repeats is None else args.repeats
        for option, value, least in (("--new-tokens", args.new_tokens, 1), ("--warmup", args.warmup, 0),
                                     ("--repeats", repeats, 1), ("--threads", args.threads, 1),
                                     ("--warmup-tokens", args.warmup_tokens, 1)):
            if value is not None and value < least:  # None: the default
                raise ValueError(f"{option} must be at least {least}, got {value}")
    except ValueError as err:
        parser.error(str(err))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch.device(device)
    except RuntimeError:
        parser.error(f"--device {device!r} is not a device torch knows: give cuda, cuda:N or cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device} asked for, but torch sees no CUDA GPU")
    where = torch.device(device)
    if where.type == "cuda" and where.index is not None:  # cuda:N: what runs on "the current GPU" runs there too
        if where.index >= torch.cuda.device_count():
            parser.error(f"--device {device} does not exist: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
        torch.cuda.set_device(where)
    if args.child is None and args.save_weights is None:  # (a --cpu-table run's own processes: checked by it)
        out = R.out_folder(parser, args.out, ["results.json", "results.md", *(["summary.md"] if table else [])])
        work = None if args.work is None else R.folder_option(
            parser, "--work", args.work, "a folder for the CPU table's weights and each path's results")
        if work is not None:
            R.check_settings(parser, "--work", work, {
                **weights_setting(args.tiny), "--new-tokens": args.new_tokens,
                "--batch-sizes": ",".join(map(str, batch_sizes)),
                "--static-batch-sizes": ",".join(map(str, small_sizes)), "--warmup": args.warmup,
                "--warmup-tokens": args.warmup_tokens, "--repeats": repeats, "--threads": args.threads})
    if args.threads:
        torch.set_num_threads(args.threads)

    with quant.quiet_imports():  # transformers imports torchao, when installed, which reports optional kernels
        from transformers import Kosmos2ForConditionalGeneration  # noqa: F401
        from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    config = tiny_config() if args.tiny else full_config()
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.save_weights is not None:  # the CPU table's random weights, saved in a process of their own
        save_random_weights(config, args.save_weights)
        return 0
    if args.child is not None:  # one path of the CPU table, in its own process
        rows = run_paths(config, paths, batch_sizes=batch_sizes, small_batch_sizes=small_sizes,
                         new_tokens=args.new_tokens, warmup=args.warmup, repeats=repeats, device=device, log=log,
                         warmup_tokens=args.warmup_tokens, work=Path(args.work))
        R.write(args.child.parent, {args.child.name: rows})  # whole or not at all: a resumed run reads it
        return 0
    facts = R.run_facts("benchmark.py", argv, hide=["--work"])  # the work folder holds scratch weights
    print(f"Kosmos-2 benchmark on {device_name(device)}: paths {', '.join(paths)}", flush=True)

    def report_of(rows):
        return build_report(rows, config=config, tiny=args.tiny, new_tokens=args.new_tokens, warmup=args.warmup,
                            repeats=repeats, device=device, facts=facts, warmup_tokens=args.warmup_tokens)

    if table:
        forwarded = ["--cpu-table", "--new-tokens", str(args.new_tokens), "--batch-sizes", args.batch_sizes,
                     "--static-batch-sizes", args.static_batch_sizes, "--warmup", str(args.warmup),
                     "--warmup-tokens", str(args.warmup_tokens), "--repeats", str(repeats),
                     "--threads", str(args.threads), *(["--tiny"] if args.tiny else [])]
        with contextlib.ExitStack() as stack:
            # --work keeps the weights and each path's rows, so that an interrupted run can resume
            work = work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kosmos2-cpu-table-")))
            rows = run_isolated(forwarded, paths, work, log=log)
    else:
        rows = run_paths(config, paths, batch_sizes=batch_sizes, small_batch_sizes=small_sizes,
                         new_tokens=args.new_tokens, warmup=args.warmup, repeats=repeats, device=device, log=log,
                         warmup_tokens=args.warmup_tokens)
    report = report_of(rows)
    if out is None:
        print(to_markdown(report) + (f"\n{cpu_summary(report)}" if table else ""), end="")
    else:
        json_path, md_path = write_report(report, out, summary=table)
        print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(R.exit_status(main))

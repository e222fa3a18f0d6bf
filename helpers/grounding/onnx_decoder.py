"""Kosmos-2 with its text decoder in ONNX Runtime, 4-bit weights: ``load(quantization="int4-onnx")``.

At batch 1 a CPU spends a generated token reading the text decoder's weights, so the fastest CPU path is the
one whose weights are smallest and whose kernel reads them fastest. ONNX Runtime's ``MatMulNBits`` (4-bit
weights in blocks, the activations quantized to int8 for the product: ``accuracy_level=4``) reads them
faster than torchao's int4 kernel (six of Kosmos-2's decoder layers at one row: 4.9 ms against 8.8 ms, 5.4 ms
compiled by Inductor, on two cores of an AMD EPYC, ``bench/results/cpu/kernels.md``; 8.2 against 16.4 ms on an
Intel Xeon in an earlier run of ``bench/kernels.py``), and a whole decoder step in one ONNX Runtime graph leaves no
Python between the layers.

The graph is built here from the loaded model's own weights (no export): for each block

    x += out_proj(inner_attn_ln(attention(q_proj, k_proj, v_proj of self_attn_layer_norm(x), cache)))
    x += fc2(ffn_layernorm(gelu(fc1(final_layer_norm(x)))))

then ``layer_norm`` and ``lm_head`` on the last position. Its inputs are the hidden states after the
embeddings (``(batch, positions, embed_dim)``), how many positions there are with them (``total_length``; and
``lengths_before``, one less, per row) and each layer's key and value buffers (``past_key.N``, ``past_value.N``,
with room for every position of a caption). ONNX Runtime's ``GroupQueryAttention`` (with as many key and value
heads as query heads, so plain causal attention) writes the new positions' keys and values into those buffers
in place, bound as ``present_key.N`` and ``present_value.N`` too, so a step does not copy the whole cache (with
``MultiHeadAttention``, which returns a longer copy at each step, attention took 29 of 68 ms per step at batch 8
and 130 positions). The output is the last position's logits. Each block's
products are quantized by ONNX Runtime's own quantizer (``MatMulNBitsQuantizer``): 4-bit weights in blocks of
:data:`BLOCK_SIZE`, ``lm_head`` in 8 bits (:data:`LM_HEAD_BITS`). The vision tower, the projection and the
token embeddings stay in torch (they run once per image, or are a lookup).

That graph makes each new token. The prompt (image and text, some 71 rows at once) goes through a second graph
of the same decoder whose products are 8-bit: int8 weights with a scale per output, each row of the input
rounded to int8 with its own scale, multiplied in integers by ``MatMulInteger``
(:meth:`GraphPart.int8_product`). With many rows ONNX Runtime's integer products run on AMX where the CPU has
it: six decoder layers at 71 rows took 37-44 ms, against 125-131 ms for ``MatMulNBits`` (two cores of an Intel
Xeon, a probe; on the AMD EPYC, with VNNI, 37 against 57 ms, ``bench/results/cpu/kernels.md``); at one row they
are slower (13 against 9.5 ms; on the AMD EPYC 8.3 against 4.9 ms), so the steps keep 4 bits. The prompt graph's
weights take 1.35 GB for the real model (the step graph's 0.79 GB).

:class:`OnnxRuntimeKosmos2` generates greedily, as ``generate()`` does, with the options the course uses
(``max_new_tokens``, ``min_new_tokens``, the end-of-sequence and padding tokens, ``no_repeat_ngram_size``);
rows of a batch must have the same length without padding, as :func:`helpers.grounding.model.ground` batches
them. It has no ``forward``: for logits, load another quantization.

Building the real model's graphs takes a minute or more, so built graphs are kept on disk
(:func:`cache_dir`: ``cache/int4-onnx/`` in the course's data folder, or the folder in ``$KOSMOS2_ONNX_CACHE``;
``KOSMOS2_ONNX_CACHE=off`` keeps nothing: a graph is then read from a temporary file, removed once it is open). A
graph is named by a digest of what it is made from: the decoder's weights and configuration, the quantization
settings, this module's source and the ONNX Runtime version, so a changed weight (a merged adapter, another
checkpoint) builds a new one. A file that cannot be read is built
again; a folder that cannot be written to is reported, and the model still loads. When a graph is built and kept,
the graphs that other code kept in the folder (an earlier version of this module, another ONNX Runtime), which
no load can read again, are removed, and so are the graphs of all but the :data:`KEPT_WEIGHT_SETS` weight sets
used last (a real model's pair is about 2.1 GB, and each checkpoint or merged adapter makes its own); the banner
says how much that freed.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from helpers.course.paths import data_dir
from helpers.grounding import quantization
from helpers.grounding.int8_linear import int8_per_output
from helpers.grounding.progress import env_flag, interactive
from helpers.grounding.quantization import INSTALL, MIN_ONNXRUNTIME, QuantizationError, check_available

#: Weights per 4-bit block, each block with its own scale and zero point. In a probe of the full-size decoder
#: (random weights, two cores) a step took 60 ms in blocks of 128 and 76-80 ms in blocks of 32; on the bundled
#: model blocks of 128 with HQQ scales keep every evaluation figure within 0.4 points of float32
#: (``bench/results/cpu/bundled_accuracy.md``).
BLOCK_SIZE = 128
#: ``lm_head`` is quantized in 8 bits: it is the largest single product (65 037 × 2 048 in Kosmos-2), and the
#: one whose errors reach the chosen token directly.
LM_HEAD_BITS = 8
OPSETS = (("", 17), ("com.microsoft", 1))
#: Environment variable: the folder that keeps built graphs, or ``off`` (also ``0``, ``no``, ``false``) for none.
CACHE_ENV_VAR = "KOSMOS2_ONNX_CACHE"
#: How many weight sets' graphs the folder keeps (a weight set: the weights and settings one key is made of, with
#: the default settings one per checkpoint or merged adapter; its graphs: the step graph and its prompt graph).
#: Those used last stay (a graph read back counts as a use); older ones are removed when a new pair is kept.
KEPT_WEIGHT_SETS = 2


def cache_dir() -> Path | None:
    """The folder where built 4-bit graphs are kept: ``$KOSMOS2_ONNX_CACHE`` when set (``off`` gives None: no
    cache), else ``cache/int4-onnx`` in the course's data folder (:func:`helpers.course.paths.data_dir`)."""
    if env_flag(CACHE_ENV_VAR) is False:
        return None
    value = os.environ.get(CACHE_ENV_VAR, "").strip()
    return Path(value).expanduser() if value else data_dir() / "cache" / "int4-onnx"


@functools.cache
def code_version() -> str:
    """A digest of the code that builds and reads the graphs: this module's source and the onnx and ONNX Runtime
    versions (computed once per process: none of them changes while it runs). A graph kept by other code can never
    be read again (its key differs): :func:`_prune` removes it."""
    onnx, ort, _ = _import()
    described = {"onnx": onnx.__version__, "onnxruntime": ort.__version__,
                 "source": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def graph_key(text_model, **settings) -> str:
    """A digest of everything a graph is built from: the decoder's weights (its layers, final layer norm and
    ``lm_head``), its configuration, ``settings`` and :func:`code_version`."""
    decoder = text_model.model
    tensors = [(f"{prefix}.{name}", tensor) for prefix, module in
               (("layers", decoder.layers), ("layer_norm", decoder.layer_norm), ("lm_head", text_model.lm_head))
               for name, tensor in module.state_dict().items()]

    def digest(item) -> bytes:  # hashlib releases the GIL on large buffers: the layers are hashed on every core
        name, tensor = item
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        part = hashlib.sha256(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        part.update(data)
        return part.digest()

    described = {"settings": settings, "config": text_model.config.to_dict(), "code": code_version()}
    whole = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode())
    with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads())) as pool:
        for part in pool.map(digest, tensors):
            whole.update(part)
    return whole.hexdigest()[:32]


def _import():
    """``(onnx, onnxruntime, quantizer module)``, or a :class:`QuantizationError` that says what to install:
    :func:`~helpers.grounding.quantization.check_available`'s when a package is missing or too old."""
    check_available("int4-onnx", "cpu")
    try:
        import onnx
        import onnxruntime
        from onnxruntime.quantization import matmul_nbits_quantizer
    except ImportError as err:
        raise QuantizationError(f"quantization='int4-onnx' needs onnxruntime, onnx and onnx-ir, which are installed "
                                f"but did not import ({err}): {INSTALL} (or pip install -U "
                                f"'onnxruntime>={MIN_ONNXRUNTIME}' onnx onnx-ir)") from err
    return onnx, onnxruntime, matmul_nbits_quantizer


def _model():
    """An empty ONNX model with this module's opsets. Parts are written into one in place: the protobuf
    library copies a message at every ``make_graph``/``make_model``, gigabytes for the real model's weights."""
    onnx, _, _ = _import()

    model = onnx.ModelProto(ir_version=onnx.IR_VERSION)
    model.opset_import.extend([onnx.helper.make_opsetid(domain, version) for domain, version in OPSETS])
    return model


class GraphPart:
    """A graph of products being built (a part of the decoder here; ``bench/kernels.py`` uses one too), its
    nodes and float initializers named with a prefix, written into an ONNX model."""

    def __init__(self, prefix: str, int8: bool = False):
        self.prefix, self.model, self.int8 = prefix, _model(), int8
        self._constants: set[str] = set()
        self._rows: dict[str, tuple[str, str]] = {}  # an input's int8 codes and row scales, made once

    def constant(self, name: str, value: torch.Tensor) -> str:
        """An initializer (float32, int64, or int8/uint8 kept as they are); a name given twice is made once."""
        from onnx import TensorProto

        name = f"{self.prefix}{name}"
        if name in self._constants:
            return name
        self._constants.add(name)
        value = value.detach().cpu()  # one copy in torch: to float32 and, for a transposed weight, to row-major
        if value.dtype not in (torch.int8, torch.uint8):
            value = value.to(torch.float32 if value.is_floating_point() else torch.int64)
        array = value.contiguous().numpy()
        types = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64, np.int8: TensorProto.INT8,
                 np.uint8: TensorProto.UINT8}
        tensor = self.model.graph.initializer.add()
        tensor.name, tensor.data_type = name, types[array.dtype.type]
        tensor.dims.extend(array.shape)
        tensor.raw_data = array.tobytes()  # (x86 and ARM are little-endian, as ONNX wants)
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attributes) -> str:
        from onnx import helper

        out = f"{self.prefix}{name}"
        domain = "com.microsoft" if op in ("GroupQueryAttention", "Gelu") else ""
        self.model.graph.node.append(helper.make_node(op, inputs, outputs or [out], name=out, domain=domain,
                                                      **attributes))
        return out

    def linear(self, x: str, name: str, layer: torch.nn.Linear) -> str:
        """``x @ weight.T + bias`` as MatMul (+ Add): the quantizer turns the MatMul into MatMulNBits. In an
        ``int8`` part the product is :meth:`int8_product` instead."""
        if self.int8:
            y = self.int8_product(x, name, layer.weight)
        else:
            y = self.node("MatMul", [x, self.constant(f"{name}.weight", layer.weight.T)], f"{name}.matmul")
        if layer.bias is not None:
            y = self.node("Add", [y, self.constant(f"{name}.bias", layer.bias)], f"{name}.add")
        return y

    def int8_rows(self, x: str) -> tuple[str, str]:
        """``(codes, scales)`` of ``x``: each row rounded to 8 bits with its own scale (largest magnitude to
        127), the codes held as uint8 around 128 (the activations ``MatMulInteger``'s fast kernels take)."""
        from onnx import TensorProto

        if x not in self._rows:
            n = f"int8_rows.{len(self._rows)}"
            largest = self.node("ReduceMax", [self.node("Abs", [x], f"{n}.abs")], f"{n}.max", axes=[-1], keepdims=1)
            scale = self.node("Max", [self.node("Div", [largest, self.constant("int8.127", torch.tensor(127.0))],
                                                f"{n}.div"), self.constant("int8.tiny", torch.tensor(1e-30))],
                              f"{n}.scale")
            rounded = self.node("Round", [self.node("Div", [x, scale], f"{n}.scaled")], f"{n}.round")
            codes = self.node("Cast", [self.node("Add", [rounded, self.constant("int8.128", torch.tensor(128.0))],
                                                 f"{n}.shift")], f"{n}.codes", to=TensorProto.UINT8)
            self._rows[x] = codes, scale
        return self._rows[x]

    def int8_product(self, x: str, name: str, weight: torch.Tensor) -> str:
        """``x @ weight.T`` with 8-bit weights (one scale per output) and 8-bit rows of ``x``
        (:meth:`int8_rows`): ``MatMulInteger`` sums the codes' products in int32, then both scales apply."""
        from onnx import TensorProto

        weight_codes, scale = int8_per_output(weight)
        codes, row_scale = self.int8_rows(x)
        sums = self.node("MatMulInteger", [codes, self.constant(f"{name}.weight_int8", weight_codes.T),
                                           self.constant("int8.zero_point", torch.tensor(128, dtype=torch.uint8))],
                         f"{name}.matmul_int8")
        y = self.node("Mul", [self.node("Cast", [sums], f"{name}.sums", to=TensorProto.FLOAT), row_scale],
                      f"{name}.row_scaled")
        return self.node("Mul", [y, self.constant(f"{name}.weight_scale", scale)], f"{name}.matmul")

    def layer_norm(self, x: str, name: str, norm: torch.nn.LayerNorm) -> str:
        return self.node("LayerNormalization", [x, self.constant(f"{name}.weight", norm.weight),
                                                self.constant(f"{name}.bias", norm.bias)], name, epsilon=norm.eps,
                         axis=-1)


def _block(graph: GraphPart, x: str, block, index: int) -> str:
    attention = block.self_attn
    h = graph.layer_norm(x, "self_attn_layer_norm", block.self_attn_layer_norm)
    q, k, v = (graph.linear(h, name, getattr(attention, name)) for name in ("q_proj", "k_proj", "v_proj"))
    # (with as many key/value heads as query heads: plain attention, causal, writing the new keys and values
    # into the cache buffers in place, at the positions before ``total_length``)
    a = graph.node("GroupQueryAttention", [q, k, v, f"past_key.{index}", f"past_value.{index}", "lengths_before",
                                           "total_length"],
                   "attention", outputs=[f"{graph.prefix}attention", f"present_key.{index}", f"present_value.{index}"],
                   num_heads=attention.num_heads, kv_num_heads=attention.num_heads, scale=float(attention.scaling))
    a = graph.linear(graph.layer_norm(a, "inner_attn_ln", attention.inner_attn_ln), "out_proj", attention.out_proj)
    x = graph.node("Add", [x, a], "residual_attention")
    ffn = block.ffn
    h = graph.linear(graph.layer_norm(x, "final_layer_norm", block.final_layer_norm), "fc1", ffn.fc1)
    h = graph.layer_norm(graph.node("Gelu", [h], "gelu"), "ffn_layernorm", ffn.ffn_layernorm)
    return graph.node("Add", [x, graph.linear(h, "fc2", ffn.fc2)], "residual_ffn")


def quantize_part(graph: GraphPart, inputs: list, outputs: list, bits: int | None, block_size: int, hqq: bool):
    """The part as an ONNX model with these inputs and outputs, its MatMuls turned into MatMulNBits of ``bits``
    (None: kept float) by ONNX Runtime's quantizer."""
    _, _, quantizer_module = _import()
    from onnx import helper

    model = graph.model
    model.graph.name = graph.prefix or "part"
    model.graph.input.extend(inputs)
    model.graph.output.extend(outputs)
    if bits is None:
        return model
    if hqq and bits == 4:  # (ONNX Runtime's CPU kernel takes no HQQ zero points, which are floats, in 8 bits)
        config = quantizer_module.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits)
    else:
        config = quantizer_module.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False,
                                                               accuracy_level=4, bits=bits)
    level = logging.getLogger("onnxruntime").level
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)  # the quantizer logs every layer
    try:
        with warnings.catch_warnings():  # HQQ's note that it wraps a read-only array without copying
            warnings.simplefilter("ignore", UserWarning)
            quantizer = quantizer_module.MatMulNBitsQuantizer(model, algo_config=config)
            quantizer.process()
    finally:
        logging.getLogger("onnxruntime").setLevel(level)
    quantized = quantizer.model.model
    nodes = quantized.graph.node
    if any(node.op_type == "MatMul" for node in nodes):
        raise QuantizationError(f"ONNX Runtime's quantizer left a product of {graph.prefix or 'lm_head'} in float "
                                f"(onnxruntime {_import()[1].__version__}); pip install -U onnxruntime")
    for node in nodes:  # int8 activations in the product, the fast CPU kernel (HQQ's config does not set it)
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("accuracy_level", 4)])
    return quantized


def build_graph(text_model, *, bits: int | None = 4, block_size: int = BLOCK_SIZE,
                head_bits: int | None = LM_HEAD_BITS, hqq: bool = False, int8: bool = False,
                progress: bool = False):
    """The ONNX model of a ``Kosmos2TextForCausalLM``'s decoder after the embeddings (see the module docstring).

    ``bits=None`` and ``head_bits=None`` keep float32 MatMuls: the same graph without quantization, which the
    tests compare with torch. ``int8=True`` makes every product, ``lm_head``'s too, an 8-bit one
    (:meth:`GraphPart.int8_product`; ``bits``, ``head_bits``, ``block_size`` and ``hqq`` are then unused): the
    prompt graph. ``progress`` shows a bar over the blocks (the real model's 24 take some 35 s on two cores).
    Returns an ``onnx.ModelProto``.
    """
    from tqdm.auto import tqdm

    _import()
    from onnx import TensorProto, helper

    config = text_model.config
    heads, dim = config.attention_heads, config.embed_dim
    head_dim = dim // heads
    model = _model()
    model.graph.name = "kosmos2_text_decoder"
    hidden = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["batch", "positions", dim])
    lengths = [helper.make_tensor_value_info("lengths_before", TensorProto.INT32, ["batch"]),
               helper.make_tensor_value_info("total_length", TensorProto.INT32, [])]
    model.graph.input.extend([hidden, *lengths])
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", config.vocab_size])]

    def add(part) -> None:  # the part's nodes and weights, copied once into the whole model
        model.graph.node.extend(part.graph.node)
        model.graph.initializer.extend(part.graph.initializer)

    x = "hidden_states"
    decoder = text_model.model
    if int8:
        bits = head_bits = None  # the products are 8-bit ones already: nothing for the 4-bit quantizer
    what = "int4-onnx prompt graph" if int8 else "int4-onnx graph"
    for index, block in enumerate(tqdm(decoder.layers, desc=what, unit="block", disable=not progress)):
        past = [helper.make_tensor_value_info(f"past_{kind}.{index}", TensorProto.FLOAT,
                                              ["batch", heads, "capacity", head_dim]) for kind in ("key", "value")]
        present = [helper.make_tensor_value_info(f"present_{kind}.{index}", TensorProto.FLOAT,
                                                 ["batch", heads, "capacity", head_dim]) for kind in ("key", "value")]
        part = GraphPart(f"layers.{index}.", int8=int8)
        y = _block(part, x, block, index)
        part_in = [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "positions", dim]), *past, *lengths]
        part_out = [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", "positions", dim]), *present]
        add(quantize_part(part, part_in, part_out, bits, block_size, hqq))
        model.graph.input.extend(past)
        outputs += present
        x = y
    head = GraphPart("", int8=int8)
    last = head.node("Gather", [x, head.constant("last_position", torch.tensor(-1))], "last_position_hidden",
                     axis=1)
    logits = head.linear(head.layer_norm(last, "layer_norm", decoder.layer_norm), "lm_head", text_model.lm_head)
    head.node("Identity", [logits], "logits", outputs=["logits"])
    add(quantize_part(head, [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", "positions", dim])],
                   outputs[:1], head_bits, block_size, hqq))
    model.graph.output.extend(outputs)
    return model


def weight_bytes(proto) -> int:
    """Bytes of an ONNX model's initializers: the weights, scales and zero points a pass reads."""
    from onnx import numpy_helper

    return sum(len(t.raw_data) or numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


def _serialized(proto) -> bytes:
    """``proto`` checked by onnx's checker, then serialized (what a session and a kept graph are made from)."""
    onnx, _, _ = _import()
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def session(proto, threads: int):
    """A CPU ONNX Runtime session of ``proto`` (checked first) with ``threads`` threads, logging errors only."""
    return _open(_serialized(proto), threads)


def _open(model: bytes | str, threads: int, spinning: bool = True):
    """A CPU ONNX Runtime session of a serialized model or a model file; ``spinning=False``: its threads sleep
    as soon as a run ends instead of waiting busily for the next (for a graph that runs once per caption)."""
    _, ort, _ = _import()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _graph_source(build, folder: Path | None, key: str | None, facts: dict):
    """``(graph, weight bytes, kept file or None, read from the folder, seconds spent building)`` of the graph kept
    under ``key`` or of ``build()`` (then kept under ``key``; ``key`` None: built, not kept). ``graph`` is the kept
    file's path, or when it is not kept that of a temporary file (:func:`_temporary_file`), which the caller
    removes. No session is opened yet, so that the caller can free the torch decoder first."""
    cached = _kept_graph(folder, key) if key else None
    if cached is not None:
        return (*cached, True, 0.0)
    start = time.perf_counter()
    proto = build()
    size = weight_bytes(proto)
    data = _serialized(proto)
    del proto
    seconds = time.perf_counter() - start
    kept = _keep(folder, key, data, {"weight_bytes": size, **facts}) if key else None
    # the session reads a file: the bytes need not stay in memory while the next graph is built
    return (_temporary_file(data) if kept is None else str(kept)), size, kept, False, seconds


#: How a graph's temporary file is named (:func:`_temporary_file`), in the system's folder for temporary files.
TEMPORARY_PREFIX, TEMPORARY_SUFFIX = "kosmos2-int4-onnx-", ".onnx"
#: A temporary graph file older than this (seconds) was left by a load that was killed: the next one removes it
#: (a load's own file lives from the end of building its graph to the opening of its session).
STALE_TEMPORARY_SECONDS = 6 * 3600


def _remove_stale_temporary_files() -> None:
    """Remove the temporary graph files that loads killed on the way left behind (older than
    :data:`STALE_TEMPORARY_SECONDS`; up to 1.35 GB each for the real model)."""
    now = time.time()
    for file in Path(tempfile.gettempdir()).glob(f"{TEMPORARY_PREFIX}*{TEMPORARY_SUFFIX}"):
        with contextlib.suppress(OSError):
            if now - file.stat().st_mtime > STALE_TEMPORARY_SECONDS:
                file.unlink()


def _temporary_file(data: bytes) -> str | bytes:
    """The path of a temporary file holding ``data``, a graph that is not kept, for its session to read. ONNX
    Runtime holds more of a graph handed over in memory than of one read from a file (the full-size model's two
    graphs: 5.5 GiB of private memory after loading, against 3.4 GiB from files, a probe), and the bytes would
    stay in memory while the next graph is built. Where no temporary file can be written, ``data`` itself, with a
    warning."""
    _remove_stale_temporary_files()
    name = None
    try:
        with tempfile.NamedTemporaryFile(prefix=TEMPORARY_PREFIX, suffix=TEMPORARY_SUFFIX, delete=False) as file:
            name = file.name
            file.write(data)
        return name
    except BaseException as err:  # a full disk, but also Ctrl-C while writing: no partial file stays
        if name is not None:
            with contextlib.suppress(OSError):
                os.unlink(name)
        if not isinstance(err, OSError):
            raise
        warnings.warn(f"could not write the int4-onnx graph to a temporary file ({err}); it opens from memory, "
                      "which holds about as much again as the graph's weights", stacklevel=3)
        return data


def _open_graph(graph: bytes | str, threads: int, spinning: bool = True, kept: bool = False):
    """A session of a graph from :func:`_graph_source`. A ``kept`` file that ONNX Runtime cannot read, although its
    size is the one its facts record, is a :class:`QuantizationError` that says to delete it (the decoder it would
    be built from again has been freed by then); any other failure is ONNX Runtime's own error."""
    try:
        return _open(graph, threads, spinning)
    except Exception as err:
        if not kept:
            raise
        raise QuantizationError(f"the int4-onnx graph kept in {graph} could not be read ({type(err).__name__}: "
                                f"{err}); delete it (or set {CACHE_ENV_VAR}=off) and load the model again") from err


#: A kept graph's name: a key (:func:`graph_key`), and for a prompt graph ``-prompt-int8`` after it.
_KEPT_NAME = re.compile(r"[0-9a-f]{32}(-prompt-int8)?")


def _prune(folder: Path, current_key: str | None = None) -> tuple[int, int]:
    """Remove from ``folder`` the graphs that no load reads again and those of weight sets not used lately;
    ``(graphs removed, bytes freed)``.

    Removed: graphs that other code kept (their facts name another :func:`code_version`, or none: written
    before the facts named one), and the graphs of all but the :data:`KEPT_WEIGHT_SETS` weight sets used last
    (a key's step graph and its ``-prompt-int8`` graph are one weight set; its use is the newest modification time
    of their facts files, which :func:`_keep` writes and :func:`_kept_graph` touches). ``current_key``, just
    kept, always stays. Only pairs of a graph and its facts named as this module names them are touched."""
    current, removed, freed = code_version(), 0, 0
    graphs: list[tuple[str, Path, Path, float]] = []  # (weight set's key, graph, facts, last use), this code's
    for facts_file in folder.glob("*.json"):
        if not _KEPT_NAME.fullmatch(facts_file.stem):
            continue
        graph, _ = _kept_files(folder, facts_file.stem)
        if not graph.is_file():
            continue
        try:
            facts = json.loads(facts_file.read_text(encoding="utf-8"))
            used = facts_file.stat().st_mtime
        except (OSError, ValueError):
            continue  # unreadable: _kept_graph reports it when its key is asked for
        if not isinstance(facts, dict) or "weight_bytes" not in facts:
            continue
        if facts.get("code") == current:
            graphs.append((facts_file.stem[:32], graph, facts_file, used))
            continue
        removed, freed = _remove(graph, facts_file, removed, freed)
    last_use: dict[str, float] = {}
    for key, _, _, used in graphs:
        last_use[key] = max(used, last_use.get(key, used))
    kept = sorted(last_use, key=lambda k: (k == current_key, last_use[k]), reverse=True)[:KEPT_WEIGHT_SETS]
    for key, graph, facts_file, _ in graphs:
        if key not in kept:
            removed, freed = _remove(graph, facts_file, removed, freed)
    return removed, freed


def _remove(graph: Path, facts_file: Path, removed: int, freed: int) -> tuple[int, int]:
    """Remove a kept graph and its facts; ``(removed, freed)`` counted on (unchanged when it cannot be)."""
    try:
        size = graph.stat().st_size
        graph.unlink()
        facts_file.unlink()
    except OSError:
        return removed, freed
    return removed + 1, freed + size


def _kept_files(folder: Path, key: str) -> tuple[Path, Path]:
    """The graph kept under ``key`` and the file of its facts (its weights' size, its settings)."""
    return folder / f"{key}.onnx", folder / f"{key}.json"


def _kept_graph(folder: Path, key: str):
    """``(path, weight bytes, path)`` of the graph kept under ``key``, or None when there is none or it is not
    whole (its facts unreadable, or its size not the one they record): then it is built again, with a warning
    for a file that is there."""
    graph, facts = _kept_files(folder, key)
    if not (graph.is_file() and facts.is_file()):
        return None
    try:
        recorded = json.loads(facts.read_text(encoding="utf-8"))
        weights, size = int(recorded["weight_bytes"]), int(recorded["file_bytes"])
        if graph.stat().st_size != size:
            raise ValueError(f"it has {graph.stat().st_size} bytes, its facts say {size}")
    except Exception as err:  # a truncated or foreign file: built again and written over
        warnings.warn(f"the int4-onnx graph kept in {graph} could not be read ({type(err).__name__}: {err}); "
                      "building it again", stacklevel=4)
        return None
    try:
        os.utime(facts)  # used now: the weight sets used last are the ones :func:`_prune` keeps
    except OSError:
        pass  # a folder that can be read but not written to: nothing is pruned there either
    return str(graph), weights, graph


def _keep(folder: Path, key: str, data: bytes, facts: dict) -> Path | None:
    """Write the graph and its facts under ``key`` (each to a temporary file first, so that a graph is there
    whole or not at all); the path, or None with a warning when the folder cannot be written to. Whatever stops
    the writing (a full disk, Ctrl-C) removes what it had written: the temporary files, and the graph when its
    facts did not follow (no load reads it without them); only an ``OSError`` is answered with the warning,
    anything else is raised again."""
    graph, facts_file = _kept_files(folder, key)
    written = []  # the temporary files, then the graph once it is in place
    try:
        folder.mkdir(parents=True, exist_ok=True)
        facts = {**facts, "file_bytes": len(data), "code": code_version()}
        for path, content in ((graph, data), (facts_file, json.dumps(facts, indent=1).encode())):
            temporary = path.with_name(f"{path.name}.{os.getpid()}.part")
            written.append(temporary)
            temporary.write_bytes(content)
            os.replace(temporary, path)
            written.append(path)
    except BaseException as err:
        for path in written:
            if path != facts_file:
                try:
                    path.unlink(missing_ok=True)
                except OSError:
                    pass
        if not isinstance(err, OSError):
            raise
        warnings.warn(f"could not keep the int4-onnx graph in {folder} ({err}); the next load builds it again "
                      f"(set {CACHE_ENV_VAR} to a folder that can be written to, or to 'off')", stacklevel=4)
        return None
    return graph


class OnnxRuntimeKosmos2(torch.nn.Module):
    """A ``Kosmos2ForConditionalGeneration`` whose text decoder runs in ONNX Runtime (see the module docstring).

    The torch model keeps its vision tower, projection and embeddings, put in ``dtype`` once the graphs are made
    (None: kept as they are; ``load()`` gives the checkpoint's float32 here and bfloat16 as ``dtype``); its decoder
    layers are freed once the graphs hold them. ``session`` runs the graph that makes each new token;
    ``prompt_session`` the one that reads the prompt: the 8-bit graph with ``prompt_int8`` (the default), else the
    same graph. ``weight_bytes`` is the size of both graphs' weights. 4-bit graphs are read from, or kept in,
    ``cache``: a folder, True for :func:`cache_dir`, False for none; ``graph_file`` and ``prompt_graph_file`` are
    where they are kept (None when they are not), ``from_cache`` whether both were read from there,
    ``build_seconds`` how long building took (0 when read).
    """

    def __init__(self, model, *, bits: int | None = 4, block_size: int = BLOCK_SIZE,
                 head_bits: int | None = LM_HEAD_BITS, hqq: bool | None = None, prompt_int8: bool = True,
                 threads: int | None = None, cache: bool | str | os.PathLike = True, dtype=None):
        super().__init__()
        _, ort, _ = _import()
        if hqq is None:  # HQQ scales up to the size the int4 path gives them (they take minutes on larger models)
            hqq = quantization.uses_hqq(model)
        threads = threads or torch.get_num_threads()
        folder = cache_dir() if cache is True else (Path(cache).expanduser() if cache else None)
        settings = {"bits": bits, "block_size": block_size, "head_bits": head_bits, "hqq": hqq}
        key = graph_key(model.text_model, **settings) if folder is not None and bits is not None else None
        progress = interactive()
        start = time.perf_counter()
        temporary: list = []  # the files of graphs that are not kept: removed once the sessions are open
        try:
            step, step_bytes, self.graph_file, from_cache, _ = _graph_source(
                lambda: build_graph(model.text_model, bits=bits, block_size=block_size, head_bits=head_bits,
                                    hqq=hqq, progress=progress),
                folder, key, {**settings, "onnxruntime": ort.__version__})
            temporary += [step] if self.graph_file is None else []
            prompt, self.prompt_graph_file, prompt_bytes = None, None, 0
            if prompt_int8:
                prompt, prompt_bytes, self.prompt_graph_file, prompt_cached, _ = _graph_source(
                    lambda: build_graph(model.text_model, int8=True, progress=progress),
                    folder, self.graph_file and f"{key}-prompt-int8",  # kept beside the step graph, or not at all
                    {"int8": True, "onnxruntime": ort.__version__})
                temporary += [prompt] if self.prompt_graph_file is None else []
                from_cache = from_cache and prompt_cached
            model.text_model.model.layers = torch.nn.ModuleList()  # now in the graphs: freed before the sessions open
            gc.collect()
            self.session = _open_graph(step, threads, kept=self.graph_file is not None)
            del step
            # the prompt graph runs once per caption: its threads must not keep a core busy while the steps run
            self.prompt_session = self.session if prompt is None else _open_graph(
                prompt, threads, spinning=False, kept=self.prompt_graph_file is not None)
            del prompt
        finally:
            for name in temporary:
                if isinstance(name, str):  # (bytes where no temporary file could be written)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
        # What stays in torch (the vision tower, the projection, the embeddings) takes ``dtype`` only now: made
        # before the sessions open, its copies added to their reading's peak (4.4 GiB instead of 3.9 on the
        # full-size model, float32 checkpoint, ``bench/memory.py``).
        if dtype is not None:
            model.to(dtype)
        self.from_cache, self.weight_bytes = from_cache, step_bytes + prompt_bytes
        self.build_seconds = 0.0 if from_cache else time.perf_counter() - start
        #: (graphs, bytes) removed from the folder: kept by other code, or of weight sets not used lately
        #: (:func:`_prune`)
        self.pruned = _prune(folder, key) if self.graph_file is not None and not from_cache else (0, 0)
        self.model = model
        self.config = model.config
        self.generation_config = model.generation_config
        self.description = (f"text decoder in ONNX Runtime {ort.__version__}: "
                            + (f"{bits}-bit weights in blocks of {block_size}" if bits else "float32 weights")
                            + (f" ({'HQQ' if hqq else 'min-max'} scales)" if bits else "")
                            + (f", lm_head {head_bits}-bit" if head_bits else ", lm_head float32")
                            + ("; the prompt through 8-bit weights and 8-bit rows" if prompt_int8 else ""))
        text_config = model.config.text_config
        self._layers = text_config.layers
        self._kv_shape = (text_config.attention_heads, text_config.embed_dim // text_config.attention_heads)

    def extra_repr(self) -> str:
        return self.description

    def describe_graphs(self) -> str:
        """Where the text decoder graphs came from, for :func:`helpers.grounding.model.load`'s banner: read from the
        cache folder, or built (in how long, and where they were kept), with the older graphs removed from there."""
        kept = self.graph_file.parent if self.graph_file else None  # the graphs for the prompt and the steps
        text = (f"Its text decoder graphs were read from {kept}" if self.from_cache else
                f"Its text decoder graphs were built in {self.build_seconds:.1f} s"
                + (f" and kept in {kept} for the next load" if kept else ""))
        removed, freed = self.pruned
        if removed:
            text += (f"; {removed} older graph{'s' * (removed > 1)} {'were' if removed > 1 else 'was'} removed from "
                     f"there ({freed / 1e9:.2f} GB freed), kept by an earlier version of the course or for weights "
                     f"other than the {KEPT_WEIGHT_SETS} loaded last")
        return text

    def forward(self, *args, **kwargs):
        raise NotImplementedError("quantization='int4-onnx' only generates (model.generate or ground()); load "
                                  "another quantization (e.g. 'int4' or 'none') for logits or attentions")

    def _run(self, session, hidden: torch.Tensor, cache: list, before: int) -> torch.Tensor:
        """The last position's logits after ``hidden`` (positions ``before`` onwards), whose keys and values the
        graph writes into ``cache`` (:meth:`_cache`) in place."""
        binding = session.io_binding()
        binding.bind_cpu_input("hidden_states", np.ascontiguousarray(hidden.float().numpy()))
        total = before + hidden.shape[1]
        binding.bind_cpu_input("lengths_before", np.full(hidden.shape[0], total - 1, dtype=np.int32))
        binding.bind_cpu_input("total_length", np.array(total, dtype=np.int32))
        binding.bind_output("logits")
        for index in range(self._layers):
            for kind, buffer in zip(("key", "value"), cache[2 * index:2 * index + 2]):
                binding.bind_ortvalue_input(f"past_{kind}.{index}", buffer)
                binding.bind_ortvalue_output(f"present_{kind}.{index}", buffer)
        session.run_with_iobinding(binding)
        return torch.from_numpy(binding.get_outputs()[0].numpy())

    def _cache(self, rows: int, capacity: int) -> list:
        """Each layer's key and value buffers for ``capacity`` positions of ``rows`` rows: the graphs write each
        position's keys and values into them, so no step copies the cache."""
        import onnxruntime as ort

        shape = (rows, self._kv_shape[0], capacity, self._kv_shape[1])
        return [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=np.float32)) for _ in range(2 * self._layers)]

    def _settings(self, generation_config, kwargs: dict[str, Any]):
        accepted = {"max_new_tokens", "min_new_tokens", "pad_token_id", "eos_token_id", "no_repeat_ngram_size",
                    "do_sample", "num_beams", "use_cache"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise TypeError(f"quantization='int4-onnx' generates with {', '.join(sorted(accepted))}; got "
                            f"{', '.join(unknown)}")
        settings = copy.deepcopy(generation_config or self.generation_config)
        settings.update(**kwargs)
        if settings.do_sample or (settings.num_beams or 1) != 1:
            raise ValueError("quantization='int4-onnx' decodes greedily (do_sample=False, num_beams=1); load another "
                             "quantization for sampling or beam search")
        if settings.max_new_tokens is None:
            raise ValueError("quantization='int4-onnx' needs max_new_tokens (how many tokens to generate at most)")
        return settings

    def _prompt(self, input_ids, attention_mask, pixel_values, image_embeds_position_mask, image_embeds,
                capacity: int) -> tuple[torch.Tensor, list]:
        """Image and prompt through the model: the next token's logits, and the key and value buffers, with room
        for ``capacity`` positions, that hold the prompt's."""
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("quantization='int4-onnx' takes prompts of the same length without padding "
                             "(ground() batches them so); got an attention_mask with padding")
        if image_embeds is None and pixel_values is not None:
            vision_dtype = next(self.model.vision_model.parameters()).dtype
            image_embeds = self.model.get_image_features(pixel_values.to(vision_dtype)).pooler_output
        cache = self._cache(input_ids.shape[0], capacity)
        hidden = self.model.text_model.model.forward_embedding(
            input_ids=input_ids, image_embeds=image_embeds, img_input_mask=image_embeds_position_mask, cache_length=0)
        return self._run(self.prompt_session, hidden, cache, 0), cache

    def _next(self, tokens: torch.Tensor, length: int, cache: list) -> torch.Tensor:
        """The logits after ``tokens`` (one per row), which follow ``length`` positions whose keys are in ``cache``."""
        hidden = self.model.text_model.model.forward_embedding(input_ids=tokens[:, None], cache_length=length)
        return self._run(self.session, hidden, cache, length)

    @torch.inference_mode()
    def first_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     pixel_values: torch.Tensor | None = None, image_embeds_position_mask: torch.Tensor | None = None,
                     image_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The logits of the first new token, ``(batch, vocabulary)``: the image and the prompt (the prefill)."""
        return self._prompt(input_ids, attention_mask, pixel_values, image_embeds_position_mask, image_embeds,
                            input_ids.shape[1])[0]

    @torch.inference_mode()
    def teacher_forced_logits(self, inputs: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
        """The logits given to each token of ``ids`` after the prompt of ``inputs`` when ``ids`` (prompt + new
        tokens) are fed in, ``(batch, new tokens, vocabulary)``."""
        prompt = inputs["input_ids"].shape[1]
        if ids.shape[1] <= prompt or not torch.equal(ids[:, :prompt], inputs["input_ids"]):
            raise ValueError("ids must start with the prompt's input_ids and hold at least one new token")
        logits, cache = self._prompt(inputs["input_ids"], inputs.get("attention_mask"), inputs.get("pixel_values"),
                                     inputs.get("image_embeds_position_mask"), inputs.get("image_embeds"), ids.shape[1])
        steps = [logits]
        for position in range(prompt, ids.shape[1] - 1):
            steps.append(self._next(ids[:, position], position, cache))
        return torch.stack(steps, dim=1)

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, image_embeds_position_mask: torch.Tensor | None = None,
                 image_embeds: torch.Tensor | None = None, generation_config=None, **kwargs) -> torch.Tensor:
        """Prompt ids followed by the generated ones, as ``Kosmos2ForConditionalGeneration.generate`` returns them
        (finished rows padded with ``pad_token_id`` until the batch is done)."""
        from transformers.generation import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                                             NoRepeatNGramLogitsProcessor)

        settings = self._settings(generation_config, kwargs)
        eos = settings.eos_token_id
        eos = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long)
        pad = settings.pad_token_id if settings.pad_token_id is not None else (int(eos[0]) if len(eos) else 0)
        processors = LogitsProcessorList()
        if settings.min_new_tokens and len(eos):
            processors.append(MinNewTokensLengthLogitsProcessor(input_ids.shape[1], settings.min_new_tokens, eos))
        if settings.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(settings.no_repeat_ngram_size))
        logits, cache = self._prompt(input_ids, attention_mask, pixel_values, image_embeds_position_mask,
                                     image_embeds, input_ids.shape[1] + settings.max_new_tokens)
        ids = input_ids
        unfinished = torch.ones(input_ids.shape[0], dtype=torch.bool)
        for step in range(settings.max_new_tokens):
            if step:
                logits = self._next(ids[:, -1], ids.shape[1] - 1, cache)
            token = processors(ids, logits).argmax(-1)
            if len(eos):
                token = torch.where(unfinished, token, torch.full_like(token, pad))
                unfinished &= ~torch.isin(token, eos)
            ids = torch.cat([ids, token[:, None]], dim=1)
            if not bool(unfinished.any()):
                break
        return ids

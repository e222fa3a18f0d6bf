"""helpers.grounding.onnx_decoder: the text decoder as ONNX Runtime graphs (load(quantization="int4-onnx")).

The graph without quantization (float32 MatMuls) must give the bundled model's own captions, token for token, and
its logits; the quantized graph must hold 4-bit products for the blocks and an 8-bit lm_head, the prompt's graph
8-bit products of 8-bit rows, and it must say what it cannot do.
"""

from __future__ import annotations

import json
import re
import sys

import onnx
import pytest
import torch

import helpers.grounding.quantization as quant
from helpers.course.paths import bundled_model_dir
from helpers.grounding.model import AUTHORS_DECODING, ground, load
from helpers.grounding import onnx_decoder
from helpers.grounding.onnx_decoder import LM_HEAD_BITS, OnnxRuntimeKosmos2, build_graph
from helpers.grounding.prompts import CAPTION_PROMPT
from helpers.world.scenes import sample_scenes


@pytest.fixture(scope="module")
def bundled():
    """The bundled model in float32, its graph without quantization, the processor and five scenes."""
    model, processor = load(bundled_model_dir(), quantization="none", device="cpu", dtype="float32", verbose=False)
    copy, _ = load(bundled_model_dir(), quantization="none", device="cpu", dtype="float32", verbose=False)
    graph = OnnxRuntimeKosmos2(copy, bits=None, head_bits=None, prompt_int8=False)
    return model, graph, processor, sample_scenes(5, seed=11)


@pytest.mark.parametrize("decoding", ["greedy", "authors"])
def test_the_float_graph_writes_what_generate_writes(bundled, decoding) -> None:
    model, graph, processor, scenes = bundled
    kwargs = {"decoding": AUTHORS_DECODING} if decoding == "authors" else {}
    images = [s.image for s in scenes]
    expected = ground(model, processor, images, max_new_tokens=48, batch_size=3, progress=False, **kwargs)
    got = ground(graph, processor, images, max_new_tokens=48, batch_size=3, progress=False, **kwargs)
    assert [g.raw for g in got] == [g.raw for g in expected]
    assert all("</object>" in g.raw for g in got)  # real captions with boxes, ended by the model itself


def test_the_float_graph_gives_generates_logits(bundled) -> None:
    model, graph, processor, scenes = bundled
    inputs = processor(text=[CAPTION_PROMPT] * 2, images=[s.image for s in scenes[:2]], return_tensors="pt")
    prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        mask = torch.nn.functional.pad(inputs["image_embeds_position_mask"], (0, ids.shape[1] - prompt))
        expected = model(pixel_values=inputs["pixel_values"], input_ids=ids, attention_mask=torch.ones_like(ids),
                         image_embeds_position_mask=mask).logits[:, prompt - 1:-1]
    got = graph.teacher_forced_logits(inputs, ids)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(graph.first_logits(**inputs), expected[:, 0], atol=2e-4, rtol=1e-4)


def test_each_pass_writes_its_keys_and_values_into_the_cache_in_place(bundled) -> None:
    model, graph, processor, scenes = bundled
    attention = [n for n in build_graph(model.text_model, bits=None, head_bits=None).graph.node
                 if "Attention" in n.op_type]
    heads = model.config.text_config.attention_heads
    assert len(attention) == model.config.text_config.layers
    assert all(n.op_type == "GroupQueryAttention" for n in attention)  # not MultiHeadAttention, which copies
    assert all({a.name: a.i for a in n.attribute}["kv_num_heads"] == heads for n in attention)
    inputs = processor(text=[CAPTION_PROMPT], images=[scenes[0].image], return_tensors="pt")
    prompt = inputs["input_ids"].shape[1]

    def filled(buffer) -> list[bool]:  # which positions of the buffer hold keys or values
        return (buffer.numpy() != 0).any(axis=(0, 1, 3)).tolist()

    with torch.inference_mode():
        logits, cache = graph._prompt(inputs["input_ids"], inputs["attention_mask"], inputs["pixel_values"],
                                      inputs["image_embeds_position_mask"], None, prompt + 2)
        assert len(cache) == 2 * model.config.text_config.layers
        assert all(filled(b) == [True] * prompt + [False] * 2 for b in cache)
        kept = cache[0].numpy()[:, :, :prompt]
        graph._next(logits.argmax(-1), prompt, cache)
    assert all(filled(b) == [True] * (prompt + 1) + [False] for b in cache)
    assert (cache[0].numpy()[:, :, :prompt] == kept).all()  # the prompt's keys stay as they were


def test_load_builds_a_4bit_graph_with_an_8bit_lm_head(tiny_model_dir, capsys) -> None:
    model, processor = load(tiny_model_dir, quantization="int4-onnx", device="cpu")
    assert isinstance(model, OnnxRuntimeKosmos2) and model.load_info.quantization == "int4-onnx"
    assert quant.DESCRIPTIONS["int4-onnx"] in capsys.readouterr().out
    assert model.load_info.dtype == "bfloat16" and next(model.parameters()).dtype == torch.bfloat16
    assert len(model.model.text_model.model.layers) == 0  # the decoder's torch weights are freed
    assert "4-bit weights in blocks of 128 (HQQ scales), lm_head 8-bit; the prompt through 8-bit" in repr(model)
    text_model = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)[0].text_model
    proto = build_graph(text_model, hqq=True)
    products = {n.name: {a.name: a.i for a in n.attribute} for n in proto.graph.node if n.op_type == "MatMulNBits"}
    assert not [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert products.pop("lm_head.matmul_Q8")["bits"] == LM_HEAD_BITS
    assert len(products) == 6 and all(p["bits"] == 4 and p["accuracy_level"] == 4 for p in products.values())
    unquantized = build_graph(load(tiny_model_dir, device="cpu", verbose=False)[0].text_model, bits=None,
                              head_bits=None)
    prompt = build_graph(text_model, int8=True)
    assert {n.op_type for n in prompt.graph.node}.isdisjoint({"MatMul", "MatMulNBits"})
    int8 = {t.name for t in prompt.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    products = [n for n in prompt.graph.node if n.op_type == "MatMulInteger"]  # the 6 of the block, lm_head
    assert len(products) == 7 and {n.input[1] for n in products} == int8
    assert model.weight_bytes == _bytes(proto) + _bytes(prompt) and _bytes(proto) < _bytes(unquantized)
    packed = {t.name: tuple(t.dims) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.UINT8}
    for node in proto.graph.node:  # each product's weights: N rows of K/block blocks of block * bits / 8 bytes
        if node.op_type == "MatMulNBits":
            a = {a.name: a.i for a in node.attribute}
            blocks = -(-a["K"] // a["block_size"])
            assert packed[node.input[1]] == (a["N"], blocks, a["block_size"] * a["bits"] // 8)
    results = ground(model, processor, [sample_scenes(1, seed=2)[0].image], max_new_tokens=6, progress=False)
    assert results[0].raw.startswith("<image>") and len(results[0].raw) > len("<image>")


def _bytes(proto) -> int:
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in proto.graph.initializer)


def test_load_with_int4_onnx_stays_close_to_float32(bundled) -> None:
    model, _, processor, scenes = bundled
    quantized, _ = load(bundled_model_dir(), quantization="int4-onnx", device="cpu", verbose=False)
    inputs = processor(text=[CAPTION_PROMPT] * 4, images=[s.image for s in scenes[:4]], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    prompt = inputs["input_ids"].shape[1]
    mask = torch.nn.functional.pad(inputs["image_embeds_position_mask"], (0, ids.shape[1] - prompt))
    with torch.inference_mode():
        expected = model(pixel_values=inputs["pixel_values"], input_ids=ids, attention_mask=torch.ones_like(ids),
                         image_embeds_position_mask=mask).logits[:, prompt - 1:-1]
    agreement = quant.logits_agreement(expected, quantized.teacher_forced_logits(inputs, ids))
    assert 0 < agreement["relative_error"] < 0.1  # really quantized, and close
    assert agreement["top1_agreement"] >= 0.95


def test_an_int8_product_rounds_each_row_and_each_output_to_8_bits() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    torch.manual_seed(0)
    first, second = torch.nn.Linear(64, 48), torch.nn.Linear(64, 16, bias=False)
    x = torch.randn(2, 5, 64)
    x[0, 0] *= 100  # one row far larger than the others: each row has its own scale
    part = onnx_decoder.GraphPart("", int8=True)
    outputs = [part.linear("x", "first", first), part.linear("x", "second", second)]
    assert [n.op_type for n in part.model.graph.node].count("Abs") == 1  # x's rows are rounded once for both
    proto = onnx_decoder.quantize_part(
        part, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 64])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, 5, n]) for y, n in zip(outputs, (48, 16))],
        bits=None, block_size=0, hqq=False)
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"x": x.numpy()})
    with torch.no_grad():
        for layer, out in zip((first, second), got):
            expected = layer(x)
            error = torch.linalg.vector_norm(torch.from_numpy(out) - expected, dim=-1) / torch.linalg.vector_norm(
                expected, dim=-1)
            assert 0 < error.max() < 0.02  # every row within 8-bit rounding of its own size, the large one too


def test_the_int8_prompt_graph_gives_nearly_float32s_first_logits(bundled) -> None:
    model, graph, processor, scenes = bundled
    inputs = processor(text=[CAPTION_PROMPT] * 5, images=[s.image for s in scenes], return_tensors="pt")
    copy, _ = load(bundled_model_dir(), quantization="none", device="cpu", dtype="float32", verbose=False)
    int8 = OnnxRuntimeKosmos2(copy, bits=None, head_bits=None, prompt_int8=True, cache=False)
    assert int8.prompt_session is not int8.session and int8.prompt_graph_file is None
    first = quant.logits_agreement(graph.first_logits(**inputs), int8.first_logits(**inputs))
    assert 0 < first["relative_error"] < 0.05 and first["top1_agreement"] == 1.0
    ids = graph.generate(**inputs, max_new_tokens=6)  # the steps after it read the float graph
    after = quant.logits_agreement(graph.teacher_forced_logits(inputs, ids)[:, 1:],
                                   int8.teacher_forced_logits(inputs, ids)[:, 1:])
    assert 0 < after["relative_error"] < 0.02 and after["top1_agreement"] == 1.0


def test_what_the_graph_cannot_do_is_refused(bundled) -> None:
    _, graph, processor, scenes = bundled
    inputs = processor(text=[CAPTION_PROMPT, CAPTION_PROMPT + " a"], images=[s.image for s in scenes[:2]],
                       padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="same length without padding"):
        graph.generate(**inputs, max_new_tokens=4)
    inputs = processor(text=CAPTION_PROMPT, images=scenes[0].image, return_tensors="pt")
    with pytest.raises(ValueError, match="decodes greedily"):
        graph.generate(**inputs, max_new_tokens=4, num_beams=2)
    with pytest.raises(ValueError, match="decodes greedily"):
        graph.generate(**inputs, max_new_tokens=4, do_sample=True)
    with pytest.raises(TypeError, match="got output_scores"):
        graph.generate(**inputs, max_new_tokens=4, output_scores=True)
    with pytest.raises(NotImplementedError, match="only generates"):
        graph(**inputs)
    with pytest.raises(ValueError, match="must start with the prompt"):
        graph.teacher_forced_logits(inputs, inputs["input_ids"])
    assert graph.generate(**inputs, max_new_tokens=3).shape == (1, inputs["input_ids"].shape[1] + 3)


def test_without_onnxruntime_the_error_says_what_to_install(monkeypatch, tiny_model_dir) -> None:
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # installed, but import onnxruntime raises ImportError
    with pytest.raises(quant.QuantizationError,
                       match=r"needs onnxruntime, onnx and onnx-ir, which are installed but did not import "
                             r".*\[quant\]"):
        OnnxRuntimeKosmos2(model)
    assert len(model.text_model.model.layers) == 1  # nothing was taken from the model


@pytest.mark.parametrize("installed, message", [
    (None, r"needs onnxruntime, which is not installed: .*\[quant\].*'onnxruntime>=1\.32'"),
    ("1.20.0", r"needs onnxruntime >= 1\.32; this machine has 1\.20\.0: pip install -U 'onnxruntime>=1\.32'"),
])
def test_a_missing_or_old_onnxruntime_gets_the_one_message_of_the_quantization_module(
        monkeypatch, tiny_model_dir, installed, message) -> None:
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    real = quant.installed_version
    monkeypatch.setattr(quant, "installed_version",
                        lambda package: installed if package == "onnxruntime" else real(package))
    with pytest.raises(quant.QuantizationError, match=message):
        OnnxRuntimeKosmos2(model)
    assert len(model.text_model.model.layers) == 1


def test_an_older_transformers_is_refused_before_anything_is_built(monkeypatch, tiny_model_dir) -> None:
    """Below transformers 5.24 Kosmos-2 lacks what the graph's generation calls (get_image_features on the model,
    forward_embedding(cache_length=...)); generation died half-way with an AttributeError. Now the load is refused
    with the quantization module's message, the QuantizationError notebook 11 prints as "skipped"."""
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.15.0")
    message = r"needs transformers >= 5\.24; this session runs 5\.15\.0: pip install -U 'transformers>=5\.24'"
    with pytest.raises(quant.QuantizationError, match=message):
        OnnxRuntimeKosmos2(model)
    assert len(model.text_model.model.layers) == 1  # nothing was taken from the model
    with pytest.raises(quant.QuantizationError, match=message):
        load(tiny_model_dir, quantization="int4-onnx", device="cpu", verbose=False)


def _caption_inputs(processor):
    return processor(text=CAPTION_PROMPT, images=sample_scenes(1, seed=5)[0].image, return_tensors="pt")


def test_a_built_graph_is_kept_and_read_back_by_the_next_load(tiny_model_dir, tmp_path, monkeypatch,
                                                                 capsys) -> None:
    folder = tmp_path / "graphs"
    monkeypatch.setenv(onnx_decoder.CACHE_ENV_VAR, str(folder))
    first, processor = load(tiny_model_dir, quantization="int4-onnx", device="cpu")
    banner = capsys.readouterr().out
    assert not first.from_cache and first.build_seconds > 0 and first.graph_file.parent == folder
    assert first.prompt_graph_file.parent == folder and first.prompt_graph_file != first.graph_file
    assert f"graphs were built in {first.build_seconds:.1f} s and kept in {folder}" in banner
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".json", ".onnx", ".onnx"]  # no temporary file
    onnx.checker.check_model(str(first.graph_file))
    onnx.checker.check_model(str(first.prompt_graph_file))

    def no_build(*args, **kwargs):
        raise AssertionError("the kept graph should have been read, not built again")

    monkeypatch.setattr(onnx_decoder, "build_graph", no_build)
    second, _ = load(tiny_model_dir, quantization="int4-onnx", device="cpu")
    assert second.from_cache and second.build_seconds == 0 and second.graph_file == first.graph_file
    assert second.prompt_graph_file == first.prompt_graph_file and second.weight_bytes == first.weight_bytes
    assert f"graphs were read from {folder}" in capsys.readouterr().out
    inputs = _caption_inputs(processor)
    assert torch.equal(second.generate(**inputs, max_new_tokens=8), first.generate(**inputs, max_new_tokens=8))


def test_graphs_kept_by_other_code_are_removed_when_a_new_one_is_kept(tiny_model_dir, tmp_path, monkeypatch,
                                                                     capsys) -> None:
    folder = tmp_path / "graphs"
    folder.mkdir()
    stale = {"0" * 32: {"weight_bytes": 10, "code": "another version"},  # this module's names, other code
             "1" * 32 + "-prompt-int8": {"weight_bytes": 10}}  # written before the facts named their code
    for stem, facts in stale.items():
        (folder / f"{stem}.onnx").write_bytes(b"x" * 1000)
        (folder / f"{stem}.json").write_text(json.dumps(facts))
    foreign = {"notes.json": "{}", "notes.onnx": "x", "2" * 32 + ".json": '{"weight_bytes": 1}',  # no graph
               "3" * 32 + ".json": '{"code": "old"}', "3" * 32 + ".onnx": "x",  # not facts of a kept graph
               "4" * 32 + ".json": "not json", "4" * 32 + ".onnx": "x"}
    for name, text in foreign.items():
        (folder / name).write_text(text)
    monkeypatch.setenv(onnx_decoder.CACHE_ENV_VAR, str(folder))
    model, _ = load(tiny_model_dir, quantization="int4-onnx", device="cpu")
    assert model.pruned == (2, 2000)
    assert ("2 older graphs were removed from there (0.00 GB freed), kept by an earlier version of the course or "
            f"for weights other than the {onnx_decoder.KEPT_WEIGHT_SETS} loaded last") in capsys.readouterr().out
    kept = {model.graph_file.name, model.graph_file.with_suffix(".json").name, model.prompt_graph_file.name,
            model.prompt_graph_file.with_suffix(".json").name}
    assert {p.name for p in folder.iterdir()} == kept | set(foreign)
    facts = json.loads(model.graph_file.with_suffix(".json").read_text())
    assert facts["code"] == onnx_decoder.code_version()
    again, _ = load(tiny_model_dir, quantization="int4-onnx", device="cpu", verbose=False)
    assert again.from_cache and again.pruned == (0, 0)  # its own graphs stay


def test_changed_weights_or_settings_get_their_own_graph(tiny_model_dir, tmp_path) -> None:
    def fresh():
        return load(tiny_model_dir, quantization="none", device="cpu", verbose=False)[0]

    base = OnnxRuntimeKosmos2(fresh(), cache=tmp_path)
    changed = fresh()
    with torch.no_grad():
        changed.text_model.model.layers[0].ffn.fc1.weight[0, 0] += 0.5  # one weight of the decoder
    changed = OnnxRuntimeKosmos2(changed, cache=tmp_path)
    again = OnnxRuntimeKosmos2(fresh(), cache=tmp_path)
    smaller_blocks = OnnxRuntimeKosmos2(fresh(), cache=tmp_path, block_size=32)
    assert [g.from_cache for g in (base, changed, again, smaller_blocks)] == [False, False, True, False]
    assert len({base.graph_file, changed.graph_file, smaller_blocks.graph_file}) == 3
    assert again.graph_file == base.graph_file
    float_graph = OnnxRuntimeKosmos2(fresh(), cache=tmp_path, bits=None, head_bits=None)
    assert float_graph.graph_file is None and float_graph.prompt_graph_file is None
    # only 4-bit graphs are kept, each with its prompt graph, and only those of the KEPT_WEIGHT_SETS weight sets
    # used last: ``changed``'s pair made room for ``smaller_blocks``' (``base``'s was read back after it)
    assert onnx_decoder.KEPT_WEIGHT_SETS == 2 and smaller_blocks.pruned[0] == 2
    assert set(tmp_path.glob("*.onnx")) == {base.graph_file, base.prompt_graph_file, smaller_blocks.graph_file,
                                            smaller_blocks.prompt_graph_file}


def _kept_pair(graph) -> set[str]:
    """The names of the files a graph keeps: its step and prompt graphs with their facts."""
    return {p.name for f in (graph.graph_file, graph.prompt_graph_file) for p in (f, f.with_suffix(".json"))}


def test_only_the_graphs_of_the_weight_sets_used_last_are_kept(tiny_model_dir, tmp_path) -> None:
    """Each checkpoint or merged adapter builds a pair of graphs (2.1 GB for the real model): the folder keeps
    those of the KEPT_WEIGHT_SETS weight sets used last, a pair read back counting as used, and nothing else."""
    def nudged(amount: float):
        model = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)[0]
        with torch.no_grad():
            model.text_model.model.layers[0].ffn.fc1.weight[0, 0] += amount  # other weights: another key
        return model

    foreign = {"notes.json": "{}", "notes.onnx": "x", "5" * 32 + ".json": '{"weight_bytes": 1}',  # no graph
               "6" * 32 + ".json": "not json", "6" * 32 + ".onnx": "x", "7" * 32 + ".onnx.123.part": "x"}
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
    first = OnnxRuntimeKosmos2(nudged(0.0), cache=tmp_path)
    second = OnnxRuntimeKosmos2(nudged(0.5), cache=tmp_path)
    assert first.pruned == second.pruned == (0, 0)
    assert {p.name for p in tmp_path.iterdir()} == _kept_pair(first) | _kept_pair(second) | set(foreign)
    again = OnnxRuntimeKosmos2(nudged(0.0), cache=tmp_path)  # first's graphs read back: used after second's
    assert again.from_cache and again.graph_file == first.graph_file
    second_bytes = sum(f.stat().st_size for f in (second.graph_file, second.prompt_graph_file))
    third = OnnxRuntimeKosmos2(nudged(1.0), cache=tmp_path)
    assert third.pruned == (2, second_bytes)  # the weight set used longest ago: second's pair
    assert {p.name for p in tmp_path.iterdir()} == _kept_pair(first) | _kept_pair(third) | set(foreign)
    fourth = OnnxRuntimeKosmos2(nudged(1.5), cache=tmp_path)  # now first's pair is the oldest
    assert fourth.pruned[0] == 2
    assert {p.name for p in tmp_path.iterdir()} == _kept_pair(third) | _kept_pair(fourth) | set(foreign)


def test_an_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    """Ctrl-C while a graph is written: the temporary file goes, and so does a graph whose facts did not follow."""
    from pathlib import Path

    real = Path.write_bytes
    for interrupted_file in (".onnx", ".json"):  # while the graph is written; while its facts are (graph in place)
        def write_bytes(path, data, suffix=interrupted_file):
            if path.name.split(".")[1] == suffix[1:]:
                real(path, data[:len(data) // 2])
                raise KeyboardInterrupt
            return real(path, data)

        monkeypatch.setattr(Path, "write_bytes", write_bytes)
        with pytest.raises(KeyboardInterrupt):
            onnx_decoder._keep(tmp_path, "a" * 32, b"x" * 1000, {"weight_bytes": 1000})
        assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Path, "write_bytes", real)
    kept = onnx_decoder._keep(tmp_path, "a" * 32, b"x" * 1000, {"weight_bytes": 1000})
    assert kept == tmp_path / ("a" * 32 + ".onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a" * 32 + ".json", "a" * 32 + ".onnx"]


def test_an_unreadable_kept_graph_is_built_again(tiny_model_dir, tmp_path) -> None:
    model, processor = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    kept = OnnxRuntimeKosmos2(model, cache=tmp_path).graph_file
    kept.write_bytes(kept.read_bytes()[:1000])  # a graph cut short
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    with pytest.warns(UserWarning, match="could not be read .*building it again"):
        rebuilt = OnnxRuntimeKosmos2(model, cache=tmp_path)
    assert not rebuilt.from_cache and rebuilt.graph_file == kept
    onnx.checker.check_model(str(kept))  # written over, whole
    assert rebuilt.generate(**_caption_inputs(processor), max_new_tokens=4).shape[0] == 1
    kept.with_suffix(".json").write_text("{}")  # facts without the graph's size
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    with pytest.warns(UserWarning, match="could not be read .*KeyError"):
        assert not OnnxRuntimeKosmos2(model, cache=tmp_path).from_cache


def test_the_torch_decoder_is_freed_before_the_sessions_open(tiny_model_dir, tmp_path, monkeypatch) -> None:
    opened = []
    real_open = onnx_decoder._open

    def watch(graph, threads, spinning=True):
        opened.append(len(model.text_model.model.layers))
        return real_open(graph, threads, spinning)

    monkeypatch.setattr(onnx_decoder, "_open", watch)
    for expect_cache in (False, True):  # built, then read back: neither opens a session beside the torch layers
        model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
        assert len(model.text_model.model.layers) > 0
        assert OnnxRuntimeKosmos2(model, cache=tmp_path).from_cache is expect_cache
    assert opened == [0, 0, 0, 0]


def test_the_graphs_come_from_the_stored_weights_and_only_the_rest_is_put_in_bfloat16(tiny_model_dir, tmp_path,
                                                                                     monkeypatch) -> None:
    """load() hands int4-onnx the checkpoint in its stored type (float32, which transformers maps from disk rather
    than copies): the graphs are made from those weights, not from a bfloat16 copy of the whole model, and what
    stays in torch (the vision tower, the projection, the embeddings) is then put in bfloat16."""
    monkeypatch.setenv(onnx_decoder.CACHE_ENV_VAR, str(tmp_path))
    model, _ = load(tiny_model_dir, quantization="int4-onnx", device="cpu", verbose=False)
    stored = load(tiny_model_dir, quantization="none", dtype="float32", device="cpu", verbose=False)[0]
    settings = {"bits": 4, "block_size": onnx_decoder.BLOCK_SIZE, "head_bits": LM_HEAD_BITS, "hqq": True}
    assert model.graph_file.name == onnx_decoder.graph_key(stored.text_model, **settings) + ".onnx"
    assert model.graph_file.name != onnx_decoder.graph_key(stored.to(torch.bfloat16).text_model, **settings) + ".onnx"
    floats = [t for t in (*model.model.parameters(), *model.model.buffers()) if t.is_floating_point()]
    assert floats and {t.dtype for t in floats} == {torch.bfloat16}
    as_float32, _ = load(tiny_model_dir, quantization="int4-onnx", dtype="float32", device="cpu", verbose=False)
    assert {t.dtype for t in as_float32.model.parameters()} == {torch.float32}


def test_a_kept_graph_that_onnx_runtime_cannot_read_says_to_delete_it(tiny_model_dir, tmp_path) -> None:
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    kept = OnnxRuntimeKosmos2(model, cache=tmp_path).graph_file
    kept.write_bytes(b"\0" * kept.stat().st_size)  # whole in size, garbage inside
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    with pytest.raises(quant.QuantizationError, match=rf"the int4-onnx graph kept in {re.escape(str(kept))} "
                                                r"could not be read \(.*\); "
                                                r"delete it \(or set KOSMOS2_ONNX_CACHE=off\)"):
        OnnxRuntimeKosmos2(model, cache=tmp_path)


def test_a_cache_folder_that_cannot_be_written_is_reported_and_the_model_still_loads(tiny_model_dir,
                                                                                      tmp_path) -> None:
    model, processor = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="could not keep the int4-onnx graph .*KOSMOS2_ONNX_CACHE") as caught:
        graph = OnnxRuntimeKosmos2(model, cache=blocker / "graphs")
    assert len(caught) == 1  # said once, not again for the prompt graph
    assert graph.graph_file is None and graph.prompt_graph_file is None and not graph.from_cache
    assert graph.generate(**_caption_inputs(processor), max_new_tokens=4).shape[0] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_where_graphs_are_kept(monkeypatch, tmp_path) -> None:
    from helpers.course.paths import data_dir

    monkeypatch.delenv(onnx_decoder.CACHE_ENV_VAR, raising=False)
    assert onnx_decoder.cache_dir() == data_dir() / "cache" / "int4-onnx"
    monkeypatch.setenv(onnx_decoder.CACHE_ENV_VAR, str(tmp_path))
    assert onnx_decoder.cache_dir() == tmp_path
    for off in ("off", "0", "OFF", "no"):
        monkeypatch.setenv(onnx_decoder.CACHE_ENV_VAR, off)
        assert onnx_decoder.cache_dir() is None


def test_hqq_scales_up_to_the_size_limit_of_the_int4_path(tiny_model_dir, monkeypatch) -> None:
    """Which models get HQQ scales is one rule, quantization.INT4_HQQ_MAX_PARAMETERS, for the int4 and the
    int4-onnx path alike; onnx_decoder had its own copy of the limit."""
    def fresh():
        return load(tiny_model_dir, quantization="none", device="cpu", verbose=False)[0]

    assert "(HQQ scales)" in OnnxRuntimeKosmos2(fresh(), prompt_int8=False, cache=False).description
    size = sum(p.numel() for p in fresh().parameters())
    monkeypatch.setattr(quant, "INT4_HQQ_MAX_PARAMETERS", size - 1)
    assert "(min-max scales)" in OnnxRuntimeKosmos2(fresh(), prompt_int8=False, cache=False).description
    monkeypatch.setattr(quant, "INT4_HQQ_MAX_PARAMETERS", size)
    assert "(HQQ scales)" in OnnxRuntimeKosmos2(fresh(), prompt_int8=False, cache=False).description


def test_a_graph_that_is_not_kept_opens_from_a_temporary_file_removed_once_open(tiny_model_dir, tmp_path,
                                                                                 monkeypatch) -> None:
    """ONNX Runtime holds more of a graph handed over in memory than of one read from a file: a graph not kept is
    written to a temporary file for the session to read, and the files are gone once the sessions are open, or
    when the load fails on the way. Where none can be written, the graph opens from memory, with a warning."""
    import tempfile
    from pathlib import Path

    opened = []
    real_open = onnx_decoder._open

    def watch(graph, threads, spinning=True):
        opened.append((graph, isinstance(graph, str) and Path(graph).is_file()))
        return real_open(graph, threads, spinning)

    monkeypatch.setattr(onnx_decoder, "_open", watch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model, processor = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    graph = OnnxRuntimeKosmos2(model, cache=False)
    assert [(Path(g).parent, there) for g, there in opened] == [(tmp_path, True), (tmp_path, True)]
    assert list(tmp_path.iterdir()) == []  # removed once open
    assert graph.generate(**_caption_inputs(processor), max_new_tokens=4).shape[0] == 1

    real_build = onnx_decoder.build_graph

    def fail_on_the_prompt_graph(text_model, **settings):
        if settings.get("int8"):
            raise KeyboardInterrupt  # the step graph's file is written by then
        return real_build(text_model, **settings)

    monkeypatch.setattr(onnx_decoder, "build_graph", fail_on_the_prompt_graph)
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    with pytest.raises(KeyboardInterrupt):
        OnnxRuntimeKosmos2(model, cache=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(onnx_decoder, "build_graph", real_build)

    # a failure to open a temporary file is ONNX Runtime's own error, not the kept file's advice; no file stays
    monkeypatch.setattr(onnx_decoder, "_open", lambda graph, threads, spinning=True: (_ for _ in ()).throw(
        RuntimeError("cannot open")))
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    with pytest.raises(RuntimeError, match="^cannot open$"):
        OnnxRuntimeKosmos2(model, cache=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(onnx_decoder, "_open", watch)

    opened.clear()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    with pytest.warns(UserWarning, match="could not write the int4-onnx graph to a temporary file .*opens from memory"):
        graph = OnnxRuntimeKosmos2(model, cache=False)
    assert [type(g) for g, _ in opened] == [bytes, bytes]
    assert graph.generate(**_caption_inputs(processor), max_new_tokens=4).shape[0] == 1


def test_temporary_graph_files_never_stay_behind(tmp_path, monkeypatch) -> None:
    """Ctrl-C while a temporary graph file is written leaves no partial file; the files of loads killed on the way
    (older than STALE_TEMPORARY_SECONDS) are removed by the next one, those of loads under way are not."""
    import os
    import tempfile
    import time

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    name = onnx_decoder.TEMPORARY_PREFIX + "{}" + onnx_decoder.TEMPORARY_SUFFIX
    stale, current, other = tmp_path / name.format("killed"), tmp_path / name.format("running"), tmp_path / "x.onnx"
    for file in (stale, current, other):
        file.write_bytes(b"graph")
    old = time.time() - onnx_decoder.STALE_TEMPORARY_SECONDS - 60
    for file in (stale, other):
        os.utime(file, (old, old))
    graph = onnx_decoder._temporary_file(b"new graph")
    assert open(graph, "rb").read() == b"new graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([current.name, other.name, os.path.basename(graph)])

    real = tempfile.NamedTemporaryFile

    class Interrupted:
        def __init__(self, **kwargs):
            self.file = real(**kwargs)
            self.name = self.file.name

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            self.file.write(data[:2])
            raise KeyboardInterrupt

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnx_decoder._temporary_file(b"another graph")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([current.name, other.name, os.path.basename(graph)])

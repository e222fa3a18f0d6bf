"""helpers.grounding.quantization and load(quantization=...): every path on the CPU, the automatic choice,
and the errors for what a machine cannot do.

The paths run for real (bitsandbytes and torchao are installed by `make test`) on the bundled model, whose
trained weights give meaningful logits, and on the tiny random model of conftest.py. Missing or old libraries
are simulated by replacing the version look-up, which is the only thing the checks read.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from transformers import BitsAndBytesConfig

import helpers.grounding.quantization as quant
from helpers.course.paths import bundled_model_dir
from helpers.grounding.model import ground, load
from helpers.grounding.prompts import CAPTION_PROMPT
from helpers.grounding.int8_linear import Int8Linear
from helpers.grounding.quantization import QuantizationError, logits_agreement
from helpers.world.scenes import sample_scenes

PATHS = ("4bit", "nf4", "8bit", "int8", "int4")
#: How far a path may move the bundled model's logits (relative error against float32). On the shipped weights
#: the largest is FP4's, about 0.09; the answers are what the top-1 agreement below and
#: ``bench/bundled_accuracy.py`` check.
MAX_RELATIVE_ERROR = 0.1


@pytest.fixture(scope="module")
def reference():
    """The bundled model in float32, four scenes, its greedy captions as teacher-forced inputs, its logits."""
    model, processor = load(bundled_model_dir(), quantization="none", device="cpu", verbose=False)
    scenes = sample_scenes(4, seed=7)
    inputs = processor(text=[CAPTION_PROMPT] * 4, images=[s.image for s in scenes], return_tensors="pt")
    prompt = inputs["input_ids"].shape[1]
    with torch.inference_mode():
        ids = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        forced = dict(inputs, input_ids=ids, attention_mask=torch.ones_like(ids),
                      image_embeds_position_mask=torch.nn.functional.pad(inputs["image_embeds_position_mask"],
                                                                         (0, ids.shape[1] - prompt)))
        logits = model(**forced).logits[:, prompt - 1:-1]
    return forced, prompt, logits, scenes


def _layer(model):
    return model.text_model.model.layers[0].self_attn.q_proj


@pytest.mark.parametrize("name", PATHS)
def test_every_path_runs_on_the_cpu_close_to_float32(name, reference, capsys) -> None:
    forced, prompt, expected, scenes = reference
    model, processor = load(bundled_model_dir(), quantization=name, device="cpu")
    banner = capsys.readouterr().out
    assert quant.DESCRIPTIONS[name] in banner and "you asked for it" in banner
    assert model.load_info.quantization == name
    inputs = dict(forced, pixel_values=forced["pixel_values"].to(getattr(torch, model.load_info.dtype)))
    with torch.inference_mode():
        logits = model(**inputs).logits[:, prompt - 1:-1]
    agreement = logits_agreement(expected, logits)
    assert 0 < agreement["relative_error"] < MAX_RELATIVE_ERROR  # really quantized, and close
    assert agreement["top1_agreement"] >= 0.95
    results = ground(model, processor, [scenes[0].image], max_new_tokens=8, progress=False)
    assert all(g.caption.startswith("An image of") and len(g.caption) > len("An image of") for g in results)


def test_bitsandbytes_paths_use_its_layers_and_the_articles_defaults(tiny_model_dir: Path) -> None:
    import bitsandbytes as bnb

    float_model, _ = load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    for name, quant_type in (("4bit", "fp4"), ("nf4", "nf4")):
        model, _ = load(tiny_model_dir, quantization=name, device="cpu", verbose=False)
        assert isinstance(_layer(model), bnb.nn.Linear4bit)
        assert _layer(model).weight.quant_type == quant_type
        assert model.get_memory_footprint() < float_model.get_memory_footprint()
        assert model.load_info.parameters == float_model.load_info.parameters  # not the packed count
    model, _ = load(tiny_model_dir, quantization="8bit", device="cpu", verbose=False)
    assert isinstance(_layer(model), bnb.nn.Linear8bitLt) and _layer(model).weight.dtype == torch.int8
    config = quant.bitsandbytes_config("4bit", torch.float32)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and not config.bnb_4bit_use_double_quant


def test_4bit_is_the_articles_set_up_unless_a_dtype_is_asked_for() -> None:
    """The article's load on transformers 4: BitsAndBytesConfig(load_in_4bit=True) as it is (float32 arithmetic)
    and, on its GPU, the other layers in float16. Asked for a dtype (fine-tuning's 4-bit base), 4-bit computes in
    it, as NF4 (QLoRA's) always does."""
    article = quant.from_pretrained_kwargs(quant.plan("4bit", "cpu", None, None), "cpu")
    assert article["dtype"] == torch.float32
    assert article["quantization_config"].to_dict() == BitsAndBytesConfig(load_in_4bit=True).to_dict()
    asked = quant.from_pretrained_kwargs(quant.plan("4bit", "cpu", torch.bfloat16, None), "cpu")
    assert asked["dtype"] == asked["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert quant.bitsandbytes_config("nf4", dtype).bnb_4bit_compute_dtype == dtype
    assert quant.default_dtype_for("4bit", "cuda") == quant.default_dtype_for("4bit", "cuda:1") == torch.float16
    assert quant.default_dtype_for("4bit", "cpu") == torch.float32
    for name in ("int8", "int4", "int4-onnx"):
        assert quant.default_dtype_for(name, "cpu") == torch.bfloat16 == quant.plan(name, "cpu", None, None).dtype
    on_a_gpu = quant.Plan("4bit", torch.float16, compute_dtype=torch.float32)  # what plan() gives on CUDA
    assert on_a_gpu.label == quant.DESCRIPTIONS["4bit"] + ", float32 arithmetic"
    assert quant.Plan("4bit", torch.float32, compute_dtype=torch.float32).label == quant.DESCRIPTIONS["4bit"]
    # not the article's
    assert quant.plan("4bit", "cpu", torch.bfloat16, None).label == "4-bit FP4 weights (bitsandbytes)"
    model, _ = load(bundled_model_dir(), quantization="4bit", dtype="bfloat16", device="cpu", verbose=False)
    assert ", bfloat16, 4-bit FP4 weights (bitsandbytes) — " in model.load_info.banner()


def _kinds(model) -> dict[str, str]:
    """What each linear layer of ``model`` became: 'bfloat16', 'int4' or 'int8'."""
    from torchao.prototype.quantization.int4 import Int4OpaqueTensor

    kinds = {}
    for name, m in model.named_modules():
        if isinstance(m, Int8Linear):
            kinds[name] = "int8"
        elif isinstance(m, torch.nn.Linear):
            kinds[name] = "int4" if isinstance(m.weight, Int4OpaqueTensor) else str(m.weight.dtype).split(".")[-1]
    return kinds


def test_int8_and_int4_quantize_the_text_decoder_and_keep_the_vision_tower(tiny_model_dir: Path) -> None:
    once_per_image = ("vision_model.", "image_to_text_projection.")
    int8, _ = load(tiny_model_dir, quantization="int8", device="cpu", verbose=False)
    int4, _ = load(tiny_model_dir, quantization="int4", device="cpu", verbose=False)
    assert int8.load_info.dtype == int4.load_info.dtype == "bfloat16"
    kinds8, kinds4 = _kinds(int8), _kinds(int4)
    assert kinds8.keys() == kinds4.keys() and "text_model.lm_head" in kinds8
    for name, kind in kinds8.items():
        assert kind == ("bfloat16" if name.startswith(once_per_image) else "int8"), name
    for name, kind in kinds4.items():
        if name.startswith(once_per_image):
            assert kind == "bfloat16", name
        elif name == "text_model.lm_head":  # the int4 kernel needs outputs % 16 == 0 (the tiny lm_head has 1 297)
            assert kind == "int8", name
        else:
            assert kind == "int4", name


def test_int4_falls_back_to_int8_for_layers_its_kernel_cannot_take() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 96), torch.nn.Linear(96, 1297),
                                torch.nn.Linear(96, 16), torch.nn.Linear(40, 32)).to(torch.bfloat16)
    counts = quant.quantize(model, "int4")
    assert counts == {"int4 (groups of 32, HQQ scales)": 3, "int8 (a scale per output)": 2}  # small: HQQ scales
    assert list(_kinds(model).values()) == ["int4", "int4", "int8", "int4", "int8"]
    assert [quant.int4_fits(torch.nn.Linear(k, n)) for k, n in ((256, 16), (96, 32), (48, 32), (40, 32),
                                                                (128, 65037))] == [True, True, False, False, False]
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert model[0](x).shape == (3, 32) and torch.isfinite(model[0](x).float()).all()


def test_quantize_refuses_weights_that_are_not_floats_and_other_paths() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32))
    model[0].weight = torch.nn.Parameter(torch.zeros(32, 64, dtype=torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=r"takes a model with float weights \(as load\(\) gives it\); its layers are "
                                         r"\['torch.int8'\]"):
        quant.quantize(model, "int8")
    assert type(model[0]) is torch.nn.Linear  # nothing half-done
    with pytest.raises(ValueError, match=r"quantize\(\) takes 'int8' or 'int4', got '4bit'"):
        quant.quantize(torch.nn.Sequential(torch.nn.Linear(64, 32)), "4bit")


class _TiedModel(torch.nn.Module):
    """A vision layer kept in bfloat16, an embedding whose weight the output layer shares, a decoder layer."""

    def __init__(self):
        super().__init__()
        self.vision_model = torch.nn.Sequential(torch.nn.Linear(64, 64))
        self.embed = torch.nn.Embedding(96, 64)
        self.layer = torch.nn.Linear(64, 64)
        self.lm_head = torch.nn.Linear(64, 96, bias=False)
        self.lm_head.weight = self.embed.weight
        self.register_buffer("table", torch.randn(8, 64))

    def forward(self, tokens):
        x = self.layer(self.embed(tokens) + self.table[: tokens.shape[-1]])
        return self.lm_head(x + self.vision_model(x))


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_a_float32_model_is_quantized_as_its_bfloat16_copy_would_be(quantization) -> None:
    """load() hands quantize() the checkpoint in its stored type (float32, mapped from disk, not copied);
    quantize() puts it in bfloat16 a layer at a time, and the result is the one of a model put in bfloat16 whole:
    the same layers, the same products, the rest in bfloat16, the weight shared by the embedding and lm_head kept."""
    torch.manual_seed(0)
    original = _TiedModel()
    whole = _TiedModel()
    whole.load_state_dict(original.state_dict())
    counts = quant.quantize(original, quantization)
    assert counts == quant.quantize(whole.to(torch.bfloat16), quantization)
    assert counts["bfloat16 (run once per image)"] == 1
    assert _kinds(original) == _kinds(whole)
    assert original.embed.weight.dtype == original.table.dtype == torch.bfloat16
    assert original.vision_model[0].weight.dtype == torch.bfloat16
    tokens = torch.tensor([[1, 5, 7, 90]])
    with torch.no_grad():
        assert torch.equal(original(tokens), whole(tokens))
        assert original(tokens).dtype == torch.bfloat16


def test_int4_scales_come_from_hqq_for_small_models_only(monkeypatch) -> None:
    """HQQ's scales are closer to the float weights than min-max ones; above the size limit (its optimisation
    takes minutes on the real model) the path uses min-max scales."""
    torch.manual_seed(0)
    weight = torch.randn(64, 256)

    def error(limit: int) -> tuple[dict, float]:
        monkeypatch.setattr(quant, "INT4_HQQ_MAX_PARAMETERS", limit)
        layer = torch.nn.Linear(256, 64, bias=False).to(torch.bfloat16)
        layer.weight.data = weight.to(torch.bfloat16)
        counts = quant.quantize(torch.nn.Sequential(layer), "int4")
        x = torch.eye(256, dtype=torch.bfloat16)
        return counts, (layer(x).float().T - weight).norm().item() / weight.norm().item()

    hqq_counts, hqq_error = error(10**9)
    minmax_counts, minmax_error = error(1)
    assert hqq_counts == {"int4 (groups of 32, HQQ scales)": 1}
    assert minmax_counts == {"int4 (groups of 32, min-max scales)": 1}
    assert 0 < hqq_error < minmax_error < 0.2


# ------------------------------------------------------------------------------------- the automatic choice


def test_no_quantization_given_keeps_small_models_in_float32(tiny_model_dir: Path, capsys) -> None:
    model, _ = load(tiny_model_dir, device="cpu")
    assert model.load_info.quantization is None and model.load_info.dtype == "float32"
    assert "load() chose" not in capsys.readouterr().out


def test_no_quantization_given_picks_the_fastest_cpu_path_for_a_large_model(tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setattr(quant, "AUTO_CPU_PARAMETERS", 1_000)  # the tiny model stands in for the real one
    model, _ = load(tiny_model_dir, device="cpu")
    banner = capsys.readouterr().out
    assert model.load_info.quantization == quant.AUTO_CPU_CHOICE
    assert f"load() chose quantization={quant.AUTO_CPU_CHOICE!r}" in banner and "quantization='none'" in banner
    # asking for float weights, or for a dtype, keeps them
    assert load(tiny_model_dir, device="cpu", quantization="none", verbose=False)[0].load_info.quantization is None
    assert load(tiny_model_dir, device="cpu", dtype="float32", verbose=False)[0].load_info.quantization is None


def test_the_automatic_choice_needs_a_cpu_and_a_large_model() -> None:
    assert quant.plan(None, "cpu", None, 2_000_000_000).quantization == quant.AUTO_CPU_CHOICE
    assert quant.plan(None, "cpu:0", None, 2_000_000_000).quantization == quant.AUTO_CPU_CHOICE  # the same CPU
    assert quant.plan(None, "cuda", None, 2_000_000_000).quantization is None
    assert quant.plan(None, "cpu", None, 3_000_000).quantization is None
    assert quant.plan(None, "cpu", torch.float32, 2_000_000_000).quantization is None  # a dtype asked for


@pytest.mark.parametrize("torchao", [None, "0.10.0"])
def test_without_a_usable_torchao_the_automatic_choice_is_int8_and_says_why(monkeypatch, torchao) -> None:
    _versions(monkeypatch, torchao=torchao)
    chosen = quant.plan(None, "cpu", None, 2_000_000_000)
    assert (chosen.quantization, chosen.dtype) == (quant.AUTO_CPU_FALLBACK, torch.bfloat16)
    assert chosen.reason.startswith("load() chose quantization='int8' because 'int4', faster still, cannot run here: "
                                    "quantization='int4' needs torchao >= 0.18")
    assert "pip install" in chosen.reason and chosen.reason.endswith("quantization='none' gives float32")


def test_without_torchs_int8_kernel_a_large_model_stays_in_float32_and_says_why(monkeypatch) -> None:
    import helpers.grounding.int8_linear as int8_linear

    monkeypatch.setattr(int8_linear, "int8_kernel_available", lambda: False)
    chosen = quant.plan(None, "cpu", None, 2_000_000_000)
    assert (chosen.quantization, chosen.dtype) == (None, torch.float32)
    assert chosen.reason.startswith("load() kept float32, several times slower per token than quantization='int4', "
                                    "which cannot run here: quantization='int4' multiplies int8 weights")


def test_the_banner_says_why_a_large_model_got_int8(tiny_model_dir, monkeypatch, capsys) -> None:
    monkeypatch.setattr(quant, "AUTO_CPU_PARAMETERS", 1_000)  # the tiny model stands in for the real one
    _versions(monkeypatch, torchao=None)
    model, _ = load(tiny_model_dir, device="cpu:0")
    banner = capsys.readouterr().out
    assert model.load_info.quantization == "int8" and model.load_info.device == "cpu"
    assert "load() chose quantization='int8' because 'int4', faster still, cannot run here" in banner


# ------------------------------------------------------------------------------------- errors


def _versions(monkeypatch, **versions) -> None:
    real = quant.installed_version
    monkeypatch.setattr(quant, "installed_version", lambda package: versions.get(package, real(package)))
    if "transformers" in versions:  # imported here: the session runs the module's version
        monkeypatch.setattr(sys.modules["transformers"], "__version__", versions["transformers"])


@pytest.mark.parametrize(("name", "device", "versions", "message"), [
    ("4bit", "cpu", {"bitsandbytes": None}, r"needs bitsandbytes >= 0\.50\.2, which is not installed: pip install"),
    ("8bit", "cpu", {"bitsandbytes": "0.45.5"}, r"on the CPU needs bitsandbytes >= 0\.50\.2; this machine has "
                                                 r"0\.45\.5: pip install -U 'bitsandbytes>=0\.50\.2'\. On this "
                                                 r"machine's CPU, quantization='int4-onnx', 'int4' or 'int8' run "
                                                 r"\(roughly fastest first\) instead$"),
    ("nf4", "cuda", {"bitsandbytes": "0.42.0"}, r"needs bitsandbytes >= 0\.43; this machine has 0\.42\.0"),
    ("int4", "cpu", {"torchao": None}, r"needs torchao >= 0\.18, which is not installed: pip install .*\[quant\]"),
    ("int4", "cpu", {"torchao": "0.10.0"}, r"needs torchao >= 0\.18; this machine has 0\.10\.0"),
    ("int8", "cuda", {}, r"'int8' is this course's CPU path"),
    ("int4", "cuda", {}, r"'int4' is this course's CPU path .* use '4bit', 'nf4' or '8bit', or pass device='cpu'"),
    ("4bit", "mps", {}, r"runs on a CUDA GPU or on the CPU, not on 'mps'"),
    ("int4-onnx", "cpu", {"onnxruntime": None}, r"needs onnxruntime, which is not installed: pip install .*\[quant\]"),
    ("int4-onnx", "cpu", {"onnxruntime": None, "onnx": None}, r"needs onnxruntime, onnx, which are not installed"),
    ("int4-onnx", "cpu", {"onnxruntime": "1.19.0"}, r"needs onnxruntime >= 1\.32; this machine has 1\.19\.0"),
    ("int4-onnx", "cpu", {"transformers": "5.15.0"}, r"^quantization='int4-onnx' needs transformers >= 5\.24; this "
                                                     r"session runs 5\.15\.0: pip install -U 'transformers>=5\.24', "
                                                     r"then restart the session \(on Colab: Runtime > Restart "
                                                     r"session\)\. On this machine's CPU, quantization='int4', "
                                                     r"'int8', '4bit', 'nf4' or '8bit' run \(roughly fastest first\) "
                                                     r"instead$"),
    ("int4-onnx", "cuda", {}, r"in ONNX Runtime on the CPU, not on 'cuda'.* pass device='cpu'"),
])
def test_what_the_machine_cannot_do_says_what_to_install_or_choose(monkeypatch, name, device, versions, message):
    _versions(monkeypatch, **versions)
    with pytest.raises(QuantizationError, match=message):
        quant.check_available(name, device)


def test_a_missing_library_names_the_cpu_paths_that_run_here(monkeypatch) -> None:
    _versions(monkeypatch, torchao=None, bitsandbytes=None)
    with pytest.raises(QuantizationError, match=r"\. On this machine's CPU, quantization='int4-onnx' or 'int8' run "
                                                r"\(roughly fastest first\) instead$"):
        quant.check_available("int4", "cpu")
    _versions(monkeypatch, onnxruntime=None)
    with pytest.raises(QuantizationError, match=r"\. On this machine's CPU, quantization='int8' runs instead$"):
        quant.check_available("4bit", "cpu")
    import helpers.grounding.int8_linear as int8_linear

    monkeypatch.setattr(int8_linear, "int8_kernel_available", lambda: False)
    with pytest.raises(QuantizationError, match=r"No quantized path runs on this machine's CPU as it is; "
                                                r"quantization='none' gives float32$"):
        quant.check_available("4bit", "cpu")
    with pytest.raises(QuantizationError, match=r"not for 'cuda'; on a CUDA GPU use '4bit'.*device='cpu'$"):
        quant.check_available("int4", "cuda")  # the device, not a library: no list of CPU paths


def test_a_library_that_is_installed_but_does_not_import_is_named(monkeypatch) -> None:
    _versions(monkeypatch, torchao="0.18.0")
    real_import = quant.importlib.import_module

    def broken(name, *args):
        if name == "torchao":
            raise ImportError("undefined symbol: _ZN3c10")
        return real_import(name, *args)

    monkeypatch.setattr(quant.importlib, "import_module", broken)
    with pytest.raises(QuantizationError, match=r"^torchao 0\.18\.0 is installed but does not import \(ImportError: "
                                                r"undefined symbol: _ZN3c10\); reinstall it .*pip uninstall torchao"):
        quant.import_quietly()


def test_int8_needs_torchs_kernel_and_not_torchao(monkeypatch) -> None:
    import helpers.grounding.int8_linear as int8_linear

    _versions(monkeypatch, torchao=None)
    quant.check_available("int8", "cpu")  # no error: torch's own kernel
    assert quant.plan("int8", "cpu", None, None).dtype == torch.bfloat16
    monkeypatch.setattr(int8_linear, "int8_kernel_available", lambda: False)
    for name in ("int8", "int4"):  # int4's lm_head is an int8 layer
        with pytest.raises(QuantizationError, match=r"_weight_int8pack_mm, which this torch \(.*\) does not have: "
                                                    r"pip install -U torch"):
            quant.check_available(name, "cpu")


def test_load_refuses_before_reading_any_weights(tiny_model_dir, monkeypatch) -> None:
    _versions(monkeypatch, bitsandbytes=None)
    import transformers

    def fail(*args, **kwargs):
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", fail)
    with pytest.raises(QuantizationError, match="bitsandbytes"):
        load(tiny_model_dir, quantization="4bit", device="cpu", verbose=False)
    assert issubclass(QuantizationError, ValueError)


def test_a_newer_bitsandbytes_is_accepted(monkeypatch) -> None:
    _versions(monkeypatch, bitsandbytes="0.51.0", torchao="0.19.1", onnxruntime="1.33.0")
    for name in ("4bit", "nf4", "8bit", "int8", "int4", "int4-onnx"):
        quant.check_available(name, "cpu")  # no error


def test_int4_onnx_needs_the_transformers_whose_kosmos2_has_what_it_calls(monkeypatch) -> None:
    """int4-onnx calls Kosmos2ForConditionalGeneration.get_image_features and forward_embedding(cache_length=...),
    both new in transformers 5.24 (Colab shipped 5.15, where generation died with an AttributeError)."""
    assert quant.MIN_TRANSFORMERS_ONNX == "5.24"
    for accepted in ("5.24.0", "5.24.1", "5.30.0", "6.0.0"):
        _versions(monkeypatch, transformers=accepted)
        quant.check_available("int4-onnx", "cpu")  # no error
    for refused in ("5.0.0", "5.15.0", "5.23.2"):
        _versions(monkeypatch, transformers=refused)
        with pytest.raises(QuantizationError, match=rf"needs transformers >= 5\.24; this session runs {refused}"):
            quant.plan("int4-onnx", "cpu", None, None)
        for other in ("int4", "int8", "4bit"):  # the other paths do not call those
            quant.check_available(other, "cpu")
    _versions(monkeypatch, transformers="5.15.0", torchao=None)
    with pytest.raises(QuantizationError, match=r"^quantization='int4' needs torchao .* On this machine's CPU, "
                                                r"quantization='int8', '4bit', 'nf4' or '8bit' run"):
        quant.check_available("int4", "cpu")  # int4-onnx is not offered instead


def test_the_transformers_checked_is_the_one_this_session_runs(monkeypatch) -> None:
    """After pip install -U in a running notebook the installed transformers is new but the imported one is not:
    int4-onnx is refused until the session restarts (generation would die half-way in the old module)."""
    import transformers

    real = quant.installed_version
    monkeypatch.setattr(quant, "installed_version", lambda p: "5.24.0" if p == "transformers" else real(p))
    monkeypatch.setattr(transformers, "__version__", "5.15.0")
    assert quant.running_version("transformers") == "5.15.0"
    with pytest.raises(QuantizationError, match=r"this session runs 5\.15\.0: .*then restart the session"):
        quant.check_available("int4-onnx", "cpu")
    monkeypatch.delitem(sys.modules, "transformers")  # not imported yet: the installed one is what will run
    assert quant.running_version("transformers") == "5.24.0"
    quant.check_available("int4-onnx", "cpu")


def test_int4_without_a_usable_torchao_leaves_the_model_untouched(monkeypatch) -> None:
    """The torchao import and config come before any layer is converted: a torchao without the CPU int4 layout is
    refused with the model as it was (float32 weights, plain linear layers)."""
    def no_layout(hqq=False):
        raise QuantizationError("this torchao has no CPU int4 layout")

    monkeypatch.setattr(quant, "torchao_config", no_layout)
    model = _TiedModel()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(QuantizationError, match="no CPU int4 layout"):
        quant.quantize(model, "int4")
    after = model.state_dict()
    assert all(after[n].dtype == torch.float32 and torch.equal(after[n], t) for n, t in before.items())
    assert _kinds(model) == {"vision_model.0": "float32", "layer": "float32", "lm_head": "float32"}


def test_freed_memory_is_handed_back_where_the_c_library_can(monkeypatch) -> None:
    """glibc's malloc_trim(0) is called where there is one; a C library without it (musl) or none of that name
    (macOS, Windows) is left alone, without an error."""
    import ctypes

    calls = []
    monkeypatch.setattr(ctypes, "CDLL", lambda name: type("Libc", (), {"malloc_trim": staticmethod(calls.append)})())
    quant.release_freed_memory()
    assert calls == [0]
    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # musl: no malloc_trim
    quant.release_freed_memory()

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", missing)  # macOS, Windows
    quant.release_freed_memory()
    assert calls == [0]


def test_loading_int8_or_int4_quantizes_the_checkpoint_in_its_own_type(monkeypatch) -> None:
    """load() hands quantize() the model as stored (float32 for the bundled checkpoint, mapped from disk), not a
    bfloat16 copy of the whole model made first: the copy cost about 3.3 GB on the real model."""
    seen = []
    real = quant.quantize

    def watch(model, quantization):
        seen.append({p.dtype for p in model.parameters()})
        return real(model, quantization)

    monkeypatch.setattr(quant, "quantize", watch)
    for name in ("int8", "int4"):
        model, _ = load(bundled_model_dir(), quantization=name, device="cpu", verbose=False)
        assert model.load_info.dtype == "bfloat16"
    assert seen == [{torch.float32}, {torch.float32}]


def test_logits_agreement() -> None:
    reference = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]]])
    assert logits_agreement(reference, reference) == {"relative_error": 0.0, "top1_agreement": 1.0}
    moved = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 3.0, 1.0]]])
    result = logits_agreement(reference, moved)
    assert result["top1_agreement"] == 0.5
    assert result["relative_error"] == pytest.approx((18 ** 0.5) / (15 ** 0.5))
    with pytest.raises(ValueError, match=r"shape \(1, 2, 2\) cannot be compared with a reference of shape"):
        logits_agreement(reference, reference[..., :2])


def test_the_onnx_path_checks_the_onnx_packages_of_the_quant_extra(monkeypatch) -> None:
    """int4-onnx needs the quant extra's onnx* packages, read from pyproject.toml: a package added there is checked."""
    from helpers.course import colab

    assert quant.onnx_packages() == tuple(name for name in colab.extra_packages("quant") if name.startswith("onnx"))
    monkeypatch.setitem(colab.EXTRAS, "quant", (*colab.EXTRAS["quant"], "onnx-later-addition"))
    _versions(monkeypatch, **{"onnx-later-addition": None})
    with pytest.raises(QuantizationError, match=r"needs onnx-later-addition, which is not installed"):
        quant.check_available("int4-onnx", "cpu")


def _counting_trim(monkeypatch) -> list[int]:
    """malloc_trim replaced by a function that counts its calls."""
    calls: list[int] = []
    monkeypatch.setattr(quant, "_malloc_trim", lambda: calls.append)
    return calls


def test_freed_memory_is_handed_back_while_a_block_runs_and_not_after(monkeypatch) -> None:
    """releasing_freed_memory trims from its own thread, again and again while the block runs (bitsandbytes
    quantizing inside transformers' loading), and stops when the block ends, also when it fails."""
    import threading
    import time

    calls = _counting_trim(monkeypatch)
    with quant.releasing_freed_memory(interval=0.01):
        deadline = time.monotonic() + 5
        while len(calls) < 3 and time.monotonic() < deadline:  # the main thread goes on meanwhile
            time.sleep(0.005)
    assert len(calls) >= 3 and set(calls) == {0}
    after = len(calls)
    time.sleep(0.05)
    assert len(calls) == after  # stopped with the block
    assert not any(t.name == "release-freed-memory" for t in threading.enumerate())

    with pytest.raises(RuntimeError, match="inside"):
        with quant.releasing_freed_memory(interval=0.01):
            raise RuntimeError("inside")
    assert not any(t.name == "release-freed-memory" for t in threading.enumerate())


def test_releasing_freed_memory_without_glibc_or_with_a_bad_interval(monkeypatch) -> None:
    """Where the C library has no malloc_trim the block just runs, with no thread; an interval that is not a
    number of seconds above 0 is refused before the block runs."""
    import threading

    monkeypatch.setattr(quant, "_malloc_trim", lambda: None)
    ran = []
    with quant.releasing_freed_memory(interval=0.01):
        ran.append(any(t.name == "release-freed-memory" for t in threading.enumerate()))
    assert ran == [False]
    for bad in (0, -1.0, float("nan"), "0.2"):
        with pytest.raises(ValueError, match="interval must be a number above 0"):
            with quant.releasing_freed_memory(interval=bad):
                pytest.fail("the block must not run")


def test_bitsandbytes_loading_on_a_cpu_hands_freed_memory_back_as_it_goes(monkeypatch, tiny_model_dir) -> None:
    """load() trims while transformers loads the weights for bitsandbytes' paths on a CPU (where each weight is
    quantized inside that loading), and not for the paths that quantize afterwards layer by layer (they trim
    after each layer themselves) or keep float weights."""
    import contextlib

    from bitsandbytes.nn import Linear4bit

    entered = []
    real = quant.releasing_freed_memory

    @contextlib.contextmanager
    def recording(*args, **kwargs):
        with real(*args, **kwargs):
            entered.append(True)
            yield

    monkeypatch.setattr(quant, "releasing_freed_memory", recording)
    model, _ = load(tiny_model_dir, quantization="4bit", device="cpu", verbose=False)
    assert entered == [True] and any(isinstance(m, Linear4bit) for m in model.modules())  # loaded with trimming
    load(tiny_model_dir, quantization="none", device="cpu", verbose=False)
    load(tiny_model_dir, quantization="int8", device="cpu", verbose=False)
    assert entered == [True]

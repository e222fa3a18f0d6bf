"""Fine-tuning with LoRA: COCO reading, training texts, a short run, saving, loading with adapter=, merging,
resuming, and every bad input (a clear error, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.grounding.finetune import (
    Category,
    FinetuneConfig,
    FinetuneError,
    base_signature,
    check_config,
    finetune,
    main,
    read_coco,
    same_base,
    texts_for,
)
from helpers.grounding.model import describe_device
from helpers.world.new_kinds import draw_star, star_scene, write_coco
from helpers.grounding.tokens import object_tokens


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one torch thread is fastest, and much faster on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, Path]:
    """Six star scenes in COCO detection format: (annotation file, image folder)."""
    folder = tmp_path_factory.mktemp("coco")
    return write_coco(folder, 6, seed=1, name="train"), folder / "images"


@pytest.fixture(scope="module")
def trained(tiny_model_dir, coco, tmp_path_factory):
    """A 4-step run on the tiny model: (adapter folder, records)."""
    out = tmp_path_factory.mktemp("runs") / "adapter"
    records = read_coco(*coco)
    finetune(tiny_model_dir, records, out, FinetuneConfig(steps=4, batch_size=4, lr=5e-3, warmup=1, device="cpu",
                                                          new_words=("star",)), progress=False, log=lambda s: None)
    return out, records


def _edited(coco, tmp_path, edit) -> Path:
    data = json.loads(coco[0].read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------------ data and texts


def test_read_coco_gives_normalized_boxes_grouped_by_category(coco):
    data = json.loads(coco[0].read_text())
    records = read_coco(*coco)
    assert len(records) == len(data["images"]) == 6
    assert sum(len(r.objects) for r in records) == len(data["annotations"])
    ann = data["annotations"][0]
    image = data["images"][ann["image_id"]]
    x, y, w, h = ann["bbox"]
    expected = (x / image["width"], y / image["height"], (x + w) / image["width"], (y + h) / image["height"])
    boxes = [o.box for o in records[ann["image_id"]].objects]
    assert any(all(abs(a - b) < 1e-9 for a, b in zip(box, expected)) for box in boxes)
    for rec in records:
        centres = [(g[0].box[0] + g[0].box[2]) / 2 for g in rec.groups]
        assert centres == sorted(centres)  # groups left to right, as the world's captions
        assert any(o.category.name.endswith("star") for o in rec.objects)


def test_texts_cover_caption_comprehension_question_and_expressions(coco, tmp_path):
    def add_sentences(data):
        data["annotations"][0]["sentences"] = [{"sent": "the thing on the left"}, "it"]
    records = read_coco(_edited(coco, tmp_path, add_sentences), coco[1])
    texts = texts_for(records)
    first = records[0]
    mine = [t for t in texts if t.record == 0]
    caption = [t for t in mine if t.task == "caption"]
    assert len(caption) == 1 and caption[0].prompt == "<grounding> An image of"
    assert caption[0].answer.startswith(f"<phrase> {first.groups[0][0].phrase}</phrase>"
                                        + object_tokens([o.box for o in first.groups[0]]))
    assert len([t for t in mine if t.task == "comprehension"]) == len(first.groups)
    questions = [t for t in mine if t.task == "question"]
    assert len(questions) == len(first.objects)
    assert all(t.prompt.count("<patch_index_") == 2 and t.answer.startswith(" It is a") for t in questions)
    ann_image = json.loads(coco[0].read_text())["annotations"][0]["image_id"]
    expressions = [t for t in texts if t.task == "expression"]
    assert [t.record for t in expressions] == [ann_image, ann_image]
    assert expressions[0].prompt == "<grounding><phrase> the thing on the left</phrase>"


def test_world_scenes_read_back_as_the_worlds_own_captions(tmp_path):
    """Replayed world scenes must teach what the world taught: the same caption texts and boxes, and Kumo (a
    proper name, capitalized) without an article."""
    from helpers.world.language import answer_name, caption_answer
    from helpers.world.scenes import sample_scenes

    file = write_coco(tmp_path, 0, seed=3, name="world", world_scenes=60)
    records = read_coco(file, tmp_path / "images")
    texts = texts_for(records)
    scenes = sample_scenes(60, seed=3)
    captions = [t.answer for t in texts if t.task == "caption"]
    assert captions == [caption_answer(s) for s in scenes]
    questions = [t.answer for t in texts if t.task == "question"]
    assert sorted(questions) == sorted(f" It is {answer_name(o)}." for s in scenes for o in s.objects)
    assert any(" Kumo</phrase>" in c for c in captions) and not any("a Kumo" in c for c in captions)
    kumo = next(o.category for r in records for o in r.objects if o.category.name == "Kumo")
    assert (kumo.phrase(1), kumo.phrase(2), kumo.definite(1), kumo.definite(2)) == ("Kumo", "two Kumos", "Kumo",
                                                                                    "the Kumos")
    owl = Category(1, "owl", "owls")
    assert (owl.phrase(1), owl.phrase(3), owl.definite(1), owl.definite(2)) == ("an owl", "three owls", "the owl",
                                                                              "the owls")


def _turned_photo(tmp_path, width: int, height: int) -> tuple[Path, Path]:
    """A JPEG stored 60 x 40 (red top-left quarter) whose EXIF orientation 6 makes a viewer show it 40 x 60,
    and a COCO file giving it ``width`` x ``height`` with one box on the stored red quarter."""
    from PIL import Image, ImageDraw

    folder = tmp_path / "photos"
    folder.mkdir(exist_ok=True)
    stored = Image.new("RGB", (60, 40), (255, 255, 255))
    ImageDraw.Draw(stored).rectangle([0, 0, 29, 19], fill=(255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "turned.jpg", quality=95, exif=exif)
    data = {"images": [{"id": 1, "file_name": "turned.jpg", "width": width, "height": height}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 20]}],
            "categories": [{"id": 1, "name": "square"}]}
    annotations = tmp_path / "photos.json"
    annotations.write_text(json.dumps(data))
    return annotations, folder


def test_photos_are_trained_on_as_stored_which_their_boxes_measure(tmp_path):
    """COCO boxes are measured on the stored pixels: an EXIF-turned photo must be loaded unturned, or the
    box (here the red top-left quarter) would lie on other pixels."""
    from helpers.grounding.finetune import _image

    (record,) = read_coco(*_turned_photo(tmp_path, 60, 40))
    assert record.objects[0].box == (0.0, 0.0, 0.5, 0.5)
    image = _image(record.path, record.turned)
    assert not record.turned and image.size == (60, 40)
    r, g, b = image.getpixel((10, 7))  # inside the box, as stored
    assert r > 200 and g < 60 and b < 60


def test_a_record_of_the_turned_picture_or_of_a_scaled_copy_is_used_as_it_describes(tmp_path):
    """Annotation tools that show photos turned by EXIF give the turned size and measure boxes on the turned
    picture: such a record is read turned. A record for a larger original of a scaled copy (same shape) is read
    as stored: normalized boxes are the same on it."""
    from helpers.grounding.finetune import _image

    (record,) = read_coco(*_turned_photo(tmp_path, 40, 60))  # stored 60 x 40, EXIF 6: shown 40 x 60
    assert record.turned
    image = _image(record.path, record.turned)
    assert image.size == (40, 60)
    r, g, b = image.getpixel((30, 10))  # the stored top-left quarter, turned to the top right
    assert r > 200 and g < 60 and b < 60
    (scaled,) = read_coco(*_turned_photo(tmp_path, 120, 80))  # the record of an original twice the file's size
    assert not scaled.turned and scaled.objects[0].box == (0.0, 0.0, 0.25, 0.25)


def test_a_record_whose_size_fits_the_file_in_no_way_is_refused(tmp_path):
    """Caught when the data is read, before any model loads, naming the file and the sizes."""
    with pytest.raises(FinetuneError, match=r"photos\.json: images\[0\]: the record gives width 50 and height 50, "
                                            r"but image file .*turned\.jpg' is 60 x 40 pixels as stored, or 40 x 60 "
                                            r"as its EXIF tag turns it"):
        read_coco(*_turned_photo(tmp_path, 50, 50))
    annotations, folder = _turned_photo(tmp_path, 40, 60)
    from PIL import Image

    Image.new("RGB", (60, 40)).save(folder / "turned.jpg")  # no EXIF tag: 40 x 60 is then a swapped size
    with pytest.raises(FinetuneError, match=r"is 60 x 40 pixels as stored; the boxes are measured"):
        read_coco(annotations, folder)
    (folder / "turned.jpg").write_bytes(b"not a JPEG")
    with pytest.raises(FinetuneError, match=r"photos\.json: images\[0\]: file .*turned\.jpg' is not an image"):
        read_coco(annotations, folder)


def test_refs_file_adds_referring_expressions(coco, tmp_path):
    data = json.loads(coco[0].read_text())
    image, ann = data["images"][2], next(a for a in data["annotations"] if a["image_id"] == 2)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([{"file_name": image["file_name"], "bbox": ann["bbox"], "width": image["width"],
                                 "height": image["height"], "sentences": [{"sent": "the left one"}]}]))
    records = read_coco(*coco, refs=refs)
    assert [e for e, _ in records[2].expressions] == ["the left one"]


def test_a_missing_refs_file_is_named_as_the_refs_file(coco, tmp_path):
    """It was reported as "annotation file 'nope.json' does not exist", the name of the wrong kind of file."""
    with pytest.raises(FinetuneError, match=r"^refs file '.*nope.json' does not exist \(or is not a file\); expected "
                                            "RefCOCO-style referring expressions"):
        read_coco(*coco, refs=tmp_path / "nope.json")


def test_labels_fall_on_the_answer_only(coco, tiny_model):
    from helpers.world.training import IGNORE, answer_token_ids, encode_example
    from helpers.grounding.finetune import _image

    _, processor = tiny_model
    records = read_coco(*coco)
    for text in texts_for(records)[:6]:
        enc = encode_example(processor, _image(records[text.record].path), text.prompt, text.answer)
        answer = answer_token_ids(processor.tokenizer, text.answer) + [processor.tokenizer.eos_token_id]
        assert [v for v in enc.labels if v != IGNORE] == answer
        assert enc.input_ids[-len(answer):] == answer


# ---------------------------------------------------------------------------------------- training, saving, loading


def test_short_run_saves_adapters_card_and_optimizer(trained):
    out, records = trained
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "finetune.json",
                     "optimizer.safetensors"]
    card = json.loads((out / "finetune.json").read_text())
    assert card["steps"] == 4 and card["finished"] is True
    assert card["data"]["images"] == len(records) and card["data"]["objects"] == sum(len(r.objects) for r in records)
    assert 0 < card["trainable_parameters"] < card["all_parameters"]
    assert sorted(card["trained_token_embeddings"]) == sorted(["▁s", "t", "a", "r"])  # the pieces of " star"
    assert "4 steps of batch 4" in (out / "README.md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_load_with_adapter_changes_outputs_and_merging_keeps_them(trained, tiny_model_dir, tiny_model, coco):
    import torch

    from helpers.grounding.model import load

    out, records = trained
    base, processor = tiny_model
    tuned, _ = load(str(tiny_model_dir), adapter=out, device="cpu", verbose=False)
    assert tuned.load_info.adapter == str(out)
    from helpers.grounding.finetune import _image

    inputs = processor(text="<grounding> An image of", images=_image(records[0].path), return_tensors="pt")
    with torch.no_grad():
        before = base(**inputs).logits
        after = tuned(**inputs).logits
        merged = tuned.merge_and_unload()
        after_merge = merged(**inputs).logits
    assert not torch.allclose(before, after, atol=1e-4)  # the adapters do something
    torch.testing.assert_close(after_merge, after, atol=1e-4, rtol=1e-4)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_an_adapter_is_merged_into_the_int4_onnx_graph(trained, tiny_model_dir, tiny_model):
    import torch

    from helpers.grounding.finetune import _image
    from helpers.grounding.model import load
    from helpers.grounding.onnx_decoder import OnnxRuntimeKosmos2

    out, records = trained
    base, processor = tiny_model
    merged = load(str(tiny_model_dir), adapter=out, device="cpu", verbose=False)[0].merge_and_unload()
    graph, _ = load(str(tiny_model_dir), adapter=out, quantization="int4-onnx", dtype="float32", device="cpu",
                    verbose=False)
    assert isinstance(graph, OnnxRuntimeKosmos2) and graph.load_info.adapter == str(out)
    inputs = processor(text="<grounding> An image of", images=_image(records[0].path), return_tensors="pt")
    with torch.no_grad():
        tuned = merged(**inputs).logits[:, -1]
        before = base(**inputs).logits[:, -1]
    got = graph.first_logits(**inputs)
    # the graph computes the tuned model (4-bit rounding aside), not the base one
    assert torch.linalg.vector_norm(got - tuned) < 0.5 * torch.linalg.vector_norm(got - before)


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_an_adapter_is_merged_before_int8_or_int4_quantize(trained, tiny_model_dir, tiny_model, quantization):
    import torch

    from helpers.grounding.finetune import _image
    from helpers.grounding.int8_linear import Int8Linear
    from helpers.grounding.model import load

    out, records = trained
    base, processor = tiny_model
    merged = load(str(tiny_model_dir), adapter=out, device="cpu", verbose=False)[0].merge_and_unload()
    quantized, _ = load(str(tiny_model_dir), adapter=out, quantization=quantization, device="cpu", verbose=False)
    assert quantized.load_info.adapter == str(out)
    assert not any("lora" in n for n, _ in quantized.named_modules())  # merged, then quantized
    assert isinstance(quantized.text_model.lm_head, Int8Linear)
    inputs = processor(text="<grounding> An image of", images=_image(records[0].path), return_tensors="pt")
    with torch.no_grad():
        tuned = merged(**inputs).logits[:, -1]
        before = base(**inputs).logits[:, -1]
        got = quantized(**dict(inputs, pixel_values=inputs["pixel_values"].to(torch.bfloat16))).logits[:, -1].float()
    # the quantized model computes the tuned one (rounding aside), not the base one
    assert torch.linalg.vector_norm(got - tuned) < 0.5 * torch.linalg.vector_norm(got - before)


def test_training_lowers_the_loss_on_its_texts(tiny_model_dir, coco, tmp_path):
    import torch

    from helpers.grounding.finetune import _image
    from helpers.world.training import TRAINING_AIDS, collate, encode_example

    records = read_coco(*coco)[:1]
    model, processor, card = finetune(tiny_model_dir, records, tmp_path / "a",
                                      FinetuneConfig(steps=12, batch_size=4, lr=3e-2, warmup=1, device="cpu"),
                                      progress=False, log=lambda s: None)
    batch = collate([encode_example(processor, _image(records[0].path), t.prompt, t.answer)
                     for t in texts_for(records)], processor.tokenizer.pad_token_id)
    batch = {k: v for k, v in batch.items() if k not in TRAINING_AIDS}
    with torch.no_grad():
        tuned = model(**batch).loss.item()
        with model.disable_adapter():
            base = model(**batch).loss.item()
    print(f"loss on the training texts: base {base:.3f}, tuned {tuned:.3f}")
    assert tuned < base - 0.1  # a random tiny model learns slowly, but it learns


def test_the_same_seed_gives_the_same_adapters_whatever_ran_before(tiny_model_dir, coco, tmp_path):
    import torch

    records = read_coco(*coco)[:1]
    runs = []
    for earlier in (1, 2):  # what the process drew from torch's random numbers before
        torch.manual_seed(earlier)
        torch.rand(earlier)
        model, _, _ = finetune(tiny_model_dir, records, tmp_path / f"run{earlier}",
                               FinetuneConfig(steps=2, batch_size=2, device="cpu"), progress=False, log=lambda s: None)
        runs.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n})
    assert runs[0] and runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_resume_continues_the_step_count_from_the_saved_adapters_and_optimizer(trained, tiny_model_dir, tmp_path,
                                                                               monkeypatch):
    """A resumed run starts from what the run saved: its adapters (not fresh ones) and AdamW's state (moments
    and step count, not an empty optimizer), seen at the start of the resumed run, before its first step.
    (A 2 + 2-step resumed run cannot be compared with a 4-step one: a resumed run reseeds its batches.)"""
    import shutil

    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    import helpers.grounding.finetune as ft

    out, records = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    saved_adapters = load_file(str(out / "adapter_model.safetensors"))
    saved_optimizer = load_file(str(out / "optimizer.safetensors"))
    at_start: dict = {}
    original_with_adapters = ft._with_adapters

    def recording_with_adapters(*args, **kwargs):
        model = original_with_adapters(*args, **kwargs)
        at_start["adapters"] = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
        return model

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, *args, **kwargs):
            if "optimizer" not in at_start:  # the state the first step of the resumed run starts from
                at_start["optimizer"] = {id(p): {k: v.detach().clone() for k, v in self.state[p].items()}
                                         for g in self.param_groups for p in g["params"]}
            return super().step(*args, **kwargs)

    monkeypatch.setattr(ft, "_with_adapters", recording_with_adapters)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    model, _, _ = finetune(tiny_model_dir, records, copy,
                           FinetuneConfig(steps=6, batch_size=4, device="cpu", new_words=("star",)),
                           resume=True, progress=False, log=lambda s: None)
    card = json.loads((copy / "finetune.json").read_text())
    assert card["steps"] == 6
    assert [(r["from_step"], r["to_step"]) for r in card["runs"]] == [(0, 4), (4, 6)]
    assert card["runs"][-1]["machine"] == f"{describe_device('cpu')}, torch {torch.__version__}"
    # the adapters: the saved ones (lora_B starts at zero in fresh adapters; after 4 steps it is not)
    assert at_start["adapters"].keys() == saved_adapters.keys()
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in saved_adapters.items())
    for k, v in saved_adapters.items():
        assert torch.equal(at_start["adapters"][k], v), k
    # the optimizer: every trainable parameter's saved moments and step count (4), exactly
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    state = {names[i]: s for i, s in at_start["optimizer"].items()}
    assert {f"{n}::{k}" for n, s in state.items() for k in s} == saved_optimizer.keys()
    for n, s in state.items():
        assert s["step"].item() == 4, n
        for k in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s[k], saved_optimizer[f"{n}::{k}"]), (n, k)
    # and the saved optimizer counts the steps of both runs
    assert {v.item() for k, v in load_file(str(copy / "optimizer.safetensors")).items() if k.endswith("::step")} == {6}


@pytest.mark.parametrize("quantization, device, half, expected", [
    (None, "cpu", None, "float32"), ("4bit", "cpu", None, "float32"), ("4bit", "cuda", "float16", "float16"),
    ("nf4", "cuda", "bfloat16", "bfloat16")])
def test_a_4bit_base_computes_in_the_devices_half_type_on_a_gpu(tiny_model_dir, coco, tmp_path, monkeypatch,
                                                                quantization, device, half, expected):
    """QLoRA's 4-bit base computes in the GPU's half type (fp16 on a T4, bf16 from Ampere on), not in the article's
    float32, which would make every step several times slower; on a CPU, float32."""
    import torch

    import helpers.grounding.finetune as ft
    import helpers.grounding.model
    from helpers.grounding.model import ModelLoadError

    asked = {}

    def no_loading(*args, **kwargs):
        asked.update(kwargs)
        raise ModelLoadError("stop here")

    monkeypatch.setattr(helpers.grounding.model, "load", no_loading)
    if device == "cuda":  # a GPU, as far as the device check can tell
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    if half:
        monkeypatch.setattr(ft, "default_dtype",
                            lambda d: getattr(torch, half) if d.startswith("cuda") else torch.float32)
    cfg = FinetuneConfig(steps=1, quantization=quantization, device=device)
    with pytest.raises(ft.BaseModelError, match="stop here"):
        finetune(tiny_model_dir, read_coco(*coco), tmp_path / "out", cfg, progress=False)
    assert asked["dtype"] == getattr(torch, expected) and asked["quantization"] == (quantization or "none")


def test_resumed_moments_sit_beside_their_weights_as_load_state_dict_places_them(tmp_path):
    """A GPU run resumes with its weights on the GPU, while the saved moments load on the CPU: each moment must
    move to its weight's device and dtype (torch's Optimizer.load_state_dict rule), the step count stays on the
    CPU. The meta device stands in for a GPU here: an optimizer step with the moments left behind fails."""
    import torch

    import helpers.grounding.finetune as ft

    source = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(source.parameters())
    source(torch.ones(1, 3)).sum().backward()
    opt.step()
    ft._save_optimizer(opt, source, tmp_path / "optimizer.safetensors")
    for device, dtype in (("meta", torch.float32), ("cpu", torch.float64)):
        target = torch.nn.Linear(3, 2).to(device=device, dtype=dtype)
        resumed = torch.optim.AdamW(target.parameters())
        ft._load_optimizer(resumed, target, tmp_path / "optimizer.safetensors")
        for p in target.parameters():
            state = resumed.state[p]
            assert state["step"].device.type == "cpu" and state["step"].item() == 1
            for key in ("exp_avg", "exp_avg_sq"):
                assert (state[key].device.type, state[key].dtype) == (device, dtype), key
        if device == "cpu":
            expected = [opt.state[p]["exp_avg"].double() for p in source.parameters()]
            assert all(torch.equal(resumed.state[p]["exp_avg"], e) for p, e in zip(target.parameters(), expected))
            target(torch.ones(1, 3, dtype=dtype)).sum().backward()
            resumed.step()  # runs with the moments in the weights' dtype


def test_signature_survives_a_dtype_change_but_not_another_base(tiny_model):
    import copy

    import torch

    model, _ = tiny_model
    sig = base_signature(model)
    assert same_base(sig, base_signature(copy.deepcopy(model).to(torch.bfloat16)))
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_input_embeddings().weight.normal_(0, 0.02)
    assert not same_base(sig, base_signature(other))


def test_command_runs_and_writes_the_card(tiny_model_dir, coco, tmp_path, capsys):
    out = tmp_path / "cli"
    val = _edited(coco, tmp_path, lambda d: d.update(images=d["images"][:1],
                                                     annotations=[a for a in d["annotations"] if a["image_id"] == 0]))
    code = main(["--data", str(coco[0]), "--images", str(coco[1]), "--base", str(tiny_model_dir), "--out", str(out),
                 "--steps", "2", "--batch-size", "2", "--val", str(val)])
    assert code == 0
    figures = json.loads((out / "finetune.json").read_text())["figures"]
    assert {"before", "after"} <= set(next(iter(figures.values())))
    assert "held-out comprehension box hit" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][0].update(bbox=[-20, 0, 10, 10]), "reaches beyond the image"),
    (lambda d: d["annotations"][1].update(bbox=[5, 5, 500, 10]), "reaches beyond the image"),
    # within the pixel of tolerance but starting past the right edge: it used to pass here and fail later in
    # texts_for with a plain ValueError about an inverted box that named no record
    (lambda d: d["annotations"][0].update(bbox=[d["images"][d["annotations"][0]["image_id"]]["width"] + 0.5, 10,
                                                0.4, 10]), "lies outside the image"),
    (lambda d: d["annotations"][1].update(bbox=[5, d["images"][d["annotations"][1]["image_id"]]["height"], 10, 0.5]),
     "lies outside the image"),
    (lambda d: d["annotations"][0].update(bbox=[5, 5, 0, 10]), "has no area"),
    (lambda d: d["annotations"][2].update(category_id=999), "unknown category id 999"),
    (lambda d: d["images"][3].update(file_name="missing.png"), "missing.png"),
    # null: a TypeError traceback from `images / None`; "": "image file 'images' does not exist" (the folder)
    (lambda d: d["images"][3].update(file_name=None),
     r"images\[3\]: 'file_name' must be a non-empty str \(.* name in .* folder\), got None$"),
    (lambda d: d["images"][3].update(file_name=""), r"images\[3\]: 'file_name' must be a non-empty str .*, got ''$"),
    (lambda d: d.update(annotations=[]), "no images or no annotations"),
    # a second image with the id of another: one of them used to vanish, its boxes laid on the other's pixels
    (lambda d: d["images"][4].update(id=d["images"][3]["id"]),
     r"images\[4\]: image id 3 is already that of 'train_00003.png'; each image needs an id of its own"),
    (lambda d: d["categories"].append(dict(d["categories"][0], name="planet")),
     r"categories\[\d+\]: category id 1 is already that of 'red circle'; each category needs an id of its own"),
])
def test_bad_annotations_name_the_record(coco, tmp_path, edit, message):
    path = _edited(coco, tmp_path, edit)
    with pytest.raises(FinetuneError, match=message) as info:
        read_coco(path, coco[1])
    text = str(info.value)
    assert "edited.json" in text
    if "unknown category" in message or "area" in message or "the image" in message:
        assert "annotations[" in text


def test_empty_annotation_file(tmp_path, coco):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(FinetuneError, match="empty.json.*is empty"):
        read_coco(empty, coco[1])


def test_command_reports_bad_data_and_writes_nothing(tiny_model_dir, coco, tmp_path, capsys):
    bad = _edited(coco, tmp_path, lambda d: d["annotations"][0].update(category_id=77))
    out = tmp_path / "runs" / "out"
    code = main(["--data", str(bad), "--images", str(coco[1]), "--base", str(tiny_model_dir), "--out", str(out),
                 "--steps", "2"])
    assert code == 2  # bad input, as `ground` and `evaluate` say it
    err = capsys.readouterr().err
    assert err.startswith("python -m helpers finetune: error: ") and "unknown category id 77" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.fixture()
def no_loading(monkeypatch):
    """Fail the test if the command reads the data or loads a model."""
    import helpers.grounding.finetune as ft
    import helpers.grounding.model

    monkeypatch.setattr(ft, "read_coco", lambda *a, **k: pytest.fail("the data was read"))
    monkeypatch.setattr(helpers.grounding.model, "load", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.mark.parametrize("option, value", [
    ("--batch-size", "0"), ("--rank", "0"), ("--alpha", "0"), ("--steps", "0"), ("--threads", "0"),
    ("--batch-size", "-3"), ("--rank", "2.5"), ("--minutes", "0"), ("--minutes", "nan"), ("--lr", "-1e-3"),
])
def test_command_refuses_a_bad_count_before_reading_or_loading(tiny_model_dir, coco, tmp_path, capsys, no_loading,
                                                              option, value):
    out = tmp_path / "out"
    args = ["--data", str(coco[0]), "--images", str(coco[1]), "--base", str(tiny_model_dir), "--out", str(out)]
    budget = [] if option in ("--steps", "--minutes") else ["--steps", "2"]
    assert main(args + budget + [f"{option}={value}"]) == 2
    err = capsys.readouterr().err
    assert f"python -m helpers finetune: error: argument {option}: must be " in err
    assert f"got {value}\n" in err or f"got {value!r}\n" in err
    assert not out.exists()


def test_bf16_is_refused_on_a_gpu_that_only_emulates_it(tiny_model_dir, coco, tmp_path, capsys, monkeypatch,
                                                       no_loading):
    """A T4 (compute capability 7.5; ``torch.cuda.is_bf16_supported()`` says True, counting emulation) would
    fine-tune in slowly emulated bfloat16: --bf16 is refused before the data is read or the base loads."""
    import torch

    from helpers.grounding.finetune import check_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    monkeypatch.setattr(torch.version, "hip", None)
    out = tmp_path / "out"
    code = main(["--data", str(coco[0]), "--images", str(coco[1]), "--base", str(tiny_model_dir), "--out", str(out),
                 "--steps", "2", "--bf16"])  # no --device: the GPU load() would choose
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("python -m helpers finetune: error: --bf16 (bf16=True): the GPU Tesla T4 (cuda) has compute "
                          "capability 7.5") and "leave out --bf16" in err
    assert not out.exists()
    check_config(FinetuneConfig(steps=2))  # float32 on it is fine
    check_config(FinetuneConfig(steps=2, bf16=True, device="cpu"))  # CPUs are not refused
    with pytest.raises(FinetuneError, match=r"Tesla T4 \(cuda:0\) has compute capability 7\.5"):
        check_config(FinetuneConfig(steps=2, bf16=True, device="cuda:0"))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    check_config(FinetuneConfig(steps=2, bf16=True))


@pytest.mark.parametrize("field, value", [("batch_size", 0), ("rank", 0), ("alpha", 0), ("warmup", -1), ("steps", 0),
                                          ("threads", 0), ("batch_size", 2.0), ("minutes", -1.0), ("lr", 0.0),
                                          ("dropout", 1.0), ("seed", None), ("seed", "3"), ("seed", 1.5),
                                          ("seed", True), ("vision", "no"), ("bf16", "no"),
                                          ("gradient_checkpointing", "yes"), ("new_words", "star"),
                                          ("new_words", ("star", "")), ("new_words", [5])])
def test_finetune_refuses_a_bad_config_before_loading(tiny_model_dir, coco, tmp_path, monkeypatch, field, value):
    import helpers.grounding.model

    monkeypatch.setattr(helpers.grounding.model, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    cfg = FinetuneConfig(**{"steps": 2, field: value})
    with pytest.raises(FinetuneError, match=field):
        finetune(tiny_model_dir, read_coco(*coco), tmp_path / "out", cfg, progress=False)
    assert not (tmp_path / "out").exists()


def test_new_words_are_a_list_of_words_not_a_string():
    """("star") is the str "star": its letters' embeddings were trained and the card named ['▁a', '▁r', '▁s', '▁t']."""
    with pytest.raises(FinetuneError, match=r"^new_words must be a list or tuple of non-empty words, e.g. \('star',\) "
                                            r"for one word; got str 'star'$"):
        check_config(FinetuneConfig(steps=1, new_words=("star")))
    check_config(FinetuneConfig(steps=1, new_words=("star",)))
    check_config(FinetuneConfig(steps=1, new_words=["star", "sea star"]))


def test_the_settings_must_be_a_finetune_config(tiny_model_dir, coco, tmp_path, monkeypatch):
    import helpers.grounding.model

    monkeypatch.setattr(helpers.grounding.model, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(TypeError, match=r"^the settings must be a FinetuneConfig, e.g. FinetuneConfig\(steps=100\); "
                                        r"got dict: \{'steps': 1\}$"):
        finetune(tiny_model_dir, read_coco(*coco), tmp_path / "out", {"steps": 1}, progress=False)
    assert not (tmp_path / "out").exists()


def test_a_numpy_seed_is_the_seed_of_the_same_int(tiny_model_dir, coco, tmp_path):
    """np.int64(3) passed check_config, loaded the model and then failed in random.Random."""
    import numpy as np
    import torch

    records = read_coco(*coco)[:1]
    runs = []
    for seed in (np.int64(3), 3):
        model, _, card = finetune(tiny_model_dir, records, tmp_path / f"run{seed!r}",
                                  FinetuneConfig(steps=1, batch_size=2, device="cpu", seed=seed), progress=False,
                                  log=lambda s: None)
        assert type(card["config"]["seed"]) is int
        runs.append({n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n})
    assert runs[0] and all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])


def test_command_refuses_empty_new_words_before_reading_or_loading(tiny_model_dir, coco, tmp_path, capsys,
                                                                  no_loading):
    """--new-words "" trained nothing and said nothing ("trained_token_embeddings": [])."""
    out = tmp_path / "out"
    assert main(["--data", str(coco[0]), "--images", str(coco[1]), "--base", str(tiny_model_dir), "--out", str(out),
                 "--steps", "2", "--new-words", ""]) == 2
    err = capsys.readouterr().err
    assert err == ("python -m helpers finetune: error: new_words must be a list or tuple of non-empty words, e.g. "
                   "('star',) for one word; got tuple ('',)\n")
    assert not out.exists()


def test_command_refuses_an_output_folder_in_use_before_reading(tiny_model_dir, coco, tmp_path, capsys, no_loading):
    used = tmp_path / "used"
    used.mkdir()
    (used / "x.txt").write_text("mine")
    a_file = tmp_path / "file"
    a_file.write_text("")
    for out, message in ((used, "is not empty"), (a_file, "is a file")):
        assert main(["--data", str(coco[0]), "--images", str(coco[1]), "--base", str(tiny_model_dir), "--out", str(out),
                     "--steps", "2"]) == 2
        assert message in capsys.readouterr().err
    assert [f.name for f in used.iterdir()] == ["x.txt"] and a_file.read_text() == ""


def test_command_exits_1_for_a_base_that_cannot_be_loaded(tiny_model_dir, coco, tmp_path, capsys):
    """A folder with config.json but no weights, and one that is not Kosmos-2: one line on stderr, exit 1 (a
    model that cannot be loaded, as `ground` and `evaluate` say it), nothing written."""
    import shutil

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(tiny_model_dir / "config.json", no_weights / "config.json")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    for base, message in ((no_weights, "has no .safetensors weights"), (bert, "'bert' model, not Kosmos-2")):
        out = tmp_path / f"out_{base.name}"
        code = main(["--data", str(coco[0]), "--images", str(coco[1]), "--base", str(base), "--out", str(out),
                     "--steps", "2"])
        err = capsys.readouterr().err
        assert code == 1, err
        assert err.startswith("python -m helpers finetune: error: ") and message in err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()


@pytest.mark.parametrize("base", ["{tmp}/nomodel", "./nomodel", "{tmp}/a_file.png", "{tmp}",
                                  "someone/not-a-cached-model"])
def test_command_names_a_base_that_cannot_be_loaded_as_ground_does(tiny_model_dir, coco, tmp_path, capsys,
                                                                   monkeypatch, base):
    """A missing folder (absolute or relative), a file, a folder without config.json, a hub id while offline: the
    one-line message load() (and so `ground`) gives, exit 1, before the data is read. It used to be
    transformers' "Repo id must be in the form 'repo_name'…" or a two-line "We couldn't connect…"."""
    import helpers.grounding.finetune as ft
    from helpers.grounding.model import ModelLoadError, load

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "a_file.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    base = base.format(tmp=tmp_path)
    with pytest.raises(ModelLoadError) as expected:
        load(base, device="cpu", verbose=False)
    monkeypatch.setattr(ft, "read_coco", lambda *a, **k: pytest.fail("the data was read"))
    out = tmp_path / "out"
    code = main(["--data", str(coco[0]), "--images", str(coco[1]), "--base", base, "--out", str(out), "--steps", "2"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err == f"python -m helpers finetune: error: {expected.value}\n"
    assert "Repo id" not in err and "couldn't connect" not in err
    assert not out.exists()


def test_data_that_is_not_json_text_and_images_that_are_a_file_are_named(tiny_model_dir, coco, tmp_path, capsys):
    """A picture given as --data used to end in a UnicodeDecodeError traceback; a file given as --images was
    said not to exist."""
    picture = tmp_path / "photo.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(FinetuneError, match=r"annotation file '.*photo\.png' is not UTF-8 JSON text"):
        read_coco(picture, coco[1])
    with pytest.raises(FinetuneError, match=r"image folder '.*\.json' is a file, not a folder"):
        read_coco(coco[0], coco[0])
    out = tmp_path / "out"
    for data, images, message in ((picture, coco[1], "photo.png' is not UTF-8 JSON text"),
                                  (coco[0], coco[0], "is a file, not a folder")):
        code = main(["--data", str(data), "--images", str(images), "--base", str(tiny_model_dir), "--out", str(out),
                     "--steps", "2"])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith("python -m helpers finetune: error: ") and message in err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_a_device_this_machine_lacks_is_bad_input(tiny_model_dir, coco, tmp_path, capsys, monkeypatch, no_loading):
    """`finetune --device cuda` without a GPU used to exit 1 (as a base that cannot be loaded) after reading the
    data; `train --device cuda` exits 2: a device the machine lacks is bad input, said before anything is read."""
    import torch

    from helpers.grounding.finetune import check_config

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out"
    for device, message in (("cuda", "argument --device: device 'cuda' needs a CUDA GPU, but torch sees none"),
                            ("tpu", "argument --device: device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got 'tpu'")):
        code = main(["--data", str(coco[0]), "--images", str(coco[1]), "--base", str(tiny_model_dir),
                     "--out", str(out), "--steps", "2", "--device", device])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.startswith(f"python -m helpers finetune: error: {message}") and len(err.splitlines()) == 1
        assert not out.exists()
    with pytest.raises(FinetuneError, match="needs a CUDA GPU"):
        check_config(FinetuneConfig(steps=2, device="cuda"))
    check_config(FinetuneConfig(steps=2, device="cpu"))


def _option_help(parser) -> dict[str, str]:
    """Each option's help as --help prints it (one line per option, whitespace joined)."""
    import re

    text = parser.format_help()
    options = text[text.index("options:"):]
    entries = re.split(r"\n  (?=-)", options)[1:]
    return {e.split()[0].rstrip(","): " ".join(e.split()) for e in entries}


def _has_default(action) -> bool:
    """Whether --help should show the option's default: not for a switch, nor for None or an empty list."""
    return action.nargs != 0 and action.default is not None and action.default != ()


def _check_every_option_has_help_and_default(parser, monkeypatch) -> dict:
    """Every option of ``parser`` has a help line that shows its default where it has one; returns the lines."""
    monkeypatch.setenv("COLUMNS", "300")  # no line breaks inside a default
    helps = _option_help(parser)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        flag = action.option_strings[0]
        assert action.help and flag in helps and len(helps[flag]) > len(flag) + 10, flag
        if _has_default(action):
            assert f"(default: {action.default})" in helps[flag], flag
    return helps


def test_finetune_help_says_what_every_option_does_and_its_default(monkeypatch):
    """--help said nothing of --device and --threads, nor the defaults of --batch-size, --lr, --rank, --alpha and
    --seed, nor that --steps or --minutes is required."""
    from helpers.grounding.finetune import build_parser

    parser = build_parser()
    helps = _check_every_option_has_help_and_default(parser, monkeypatch)
    for flag, default in (("--batch-size", 8), ("--lr", 0.001), ("--rank", 16), ("--alpha", 32), ("--seed", 0)):
        assert f"(default: {default})" in helps[flag]
    assert "--steps or --minutes (or both) is required" in helps["--steps"]
    assert "--steps or --minutes (or both) is required" in helps["--minutes"]
    assert "(default: None)" not in parser.format_help() and "(default: False)" not in parser.format_help()


def test_finetune_demo_help_shows_its_defaults(monkeypatch):
    from helpers.world.new_kinds import build_parser

    helps = _check_every_option_has_help_and_default(build_parser(), monkeypatch)
    for flag, default in (("--minutes", 9.5), ("--train-images", 1500), ("--world-images", 4500),
                          ("--held-out-images", 240), ("--batch-size", 16), ("--threads", 2)):
        assert f"(default: {default})" in helps[flag]


def test_a_base_that_cannot_be_loaded_is_a_model_load_error(coco, tmp_path):
    from helpers.grounding.finetune import BaseModelError
    from helpers.grounding.model import ModelLoadError

    with pytest.raises(BaseModelError, match="does not exist|could not be read") as info:
        finetune(tmp_path / "nowhere", read_coco(*coco), tmp_path / "out", FinetuneConfig(steps=1), progress=False)
    assert isinstance(info.value, FinetuneError) and isinstance(info.value, ModelLoadError)


# ------------------------------------------------------------------------------------------------ layering


def test_the_grounding_package_imports_nothing_of_the_world():
    """helpers.grounding is the core: importing the fine-tuning module loads no helpers.world module."""
    import subprocess
    import sys

    code = ("import sys, helpers.grounding.finetune\n"
            "print(sorted(m for m in sys.modules if m.startswith('helpers.world')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    source = Path(__import__("helpers.grounding.finetune").grounding.finetune.__file__).read_text("utf-8")
    assert "from helpers.world.language import" not in source and "_with_box" not in source


def test_question_prompts_carry_their_box_as_the_world_writes_them(coco):
    """with_box (helpers.grounding.prompts) writes the box as the world's training texts do."""
    from helpers.grounding.prompts import qa_prompt, with_box
    from helpers.world.language import scene_examples
    from helpers.world.scenes import sample_scenes

    for scene in sample_scenes(4, seed=5):
        for ex in scene_examples(scene, jitter=0):
            if ex.task == "qa":
                noun = "character" if "this character" in ex.prompt else "object"
                assert ex.prompt == with_box(qa_prompt(noun), ex.target[0].box)
    records = read_coco(*coco)
    questions = [t for t in texts_for(records) if t.task == "question"]
    assert [t.prompt for t in questions] == [with_box(qa_prompt("object"), o.box) for r in records for o in r.objects]


def test_base_that_is_not_kosmos2(tmp_path, coco):
    base = tmp_path / "bert"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "bert"}))
    out = tmp_path / "out"
    with pytest.raises(FinetuneError, match="'bert' model, not Kosmos-2"):
        finetune(base, read_coco(*coco), out, FinetuneConfig(steps=1), progress=False)
    assert not out.exists()


def test_adapter_for_another_base_is_refused(trained, tmp_path):
    from helpers.grounding.model import load
    from helpers.world.training import new_model
    from helpers.world.language import build_processor

    out, _ = trained
    other = tmp_path / "other_base"
    processor = build_processor(64)
    new_model(processor, seed=1, vision_layers=1, text_layers=1, vision_dim=32, text_dim=32,
              heads=2).save_pretrained(other)
    processor.save_pretrained(other)
    with pytest.raises(FinetuneError, match="was trained on the base .* different one"):
        load(str(other), adapter=out, device="cpu", verbose=False)


def test_output_folder_in_use_and_interrupted_runs(trained, tiny_model_dir, coco, tmp_path):
    out, records = trained
    with pytest.raises(FinetuneError, match="not empty"):
        finetune(tiny_model_dir, records, out, FinetuneConfig(steps=1), progress=False)
    with pytest.raises(FinetuneError, match="cannot resume"):
        finetune(tiny_model_dir, records, tmp_path / "nothing", FinetuneConfig(steps=1), resume=True, progress=False)


def test_a_resumed_run_keeps_the_shape_of_its_adapters(trained, tiny_model_dir, tmp_path, monkeypatch):
    """The saved adapters fix rank, alpha, the vision tower and the trained words: another value is refused
    before the base loads, instead of being ignored by the run and written into its card."""
    import helpers.grounding.finetune as ft

    out, records = trained
    monkeypatch.setattr(ft, "check_kosmos2", lambda *a: pytest.fail("the base was read"))
    with pytest.raises(FinetuneError, match=r"cannot resume .* with other adapters: --rank 4 \(the saved adapters: "
                                            r"16\); --new-words none \(the saved adapters: star\)\. Give the saved"):
        finetune(tiny_model_dir, records, out, FinetuneConfig(steps=8, rank=4), resume=True, progress=False)
    with pytest.raises(FinetuneError, match=r"--vision on \(the saved adapters: off\)"):
        ft.check_output(out, resume=True, cfg=FinetuneConfig(steps=8, vision=True, new_words=("star",)))
    ft.check_output(out, resume=True, cfg=FinetuneConfig(steps=8, new_words=("star",)))  # the saved shape: accepted


def test_a_resume_with_no_step_left_to_make_is_refused(trained):
    """--steps counts the earlier steps: asking for no more than were made would save the same adapters again."""
    import helpers.grounding.finetune as ft

    out, _ = trained  # 4 steps made
    for steps in (2, 4):
        with pytest.raises(FinetuneError, match=rf"already made 4 steps, and steps={steps} counts them .* ask for "
                                                r"more than 4"):
            ft.check_output(out, resume=True, cfg=FinetuneConfig(steps=steps, new_words=("star",)))
    ft.check_output(out, resume=True, cfg=FinetuneConfig(steps=5, new_words=("star",)))
    ft.check_output(out, resume=True, cfg=FinetuneConfig(minutes=1, new_words=("star",)))  # a time budget: more steps


def test_resuming_compares_the_new_words_as_a_set_and_names_a_broken_card(trained, tmp_path):
    import shutil

    import helpers.grounding.finetune as ft

    out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    card = json.loads((copy / "finetune.json").read_text())
    card["config"]["new_words"] = ["stars", "star"]
    (copy / "finetune.json").write_text(json.dumps(card))
    ft.check_output(copy, resume=True, cfg=FinetuneConfig(steps=8, new_words=("star", "stars")))  # any order
    for broken in ("[]", '{"config": null}', "\x89PNG"):
        (copy / "finetune.json").write_text(broken, encoding="latin-1")
        with pytest.raises(FinetuneError, match=r"adapter card .*finetune.json' (holds|is not UTF-8).*expected the "
                                                r"finetune.json that `python -m helpers finetune` writes"):
            ft.check_output(copy, resume=True, cfg=FinetuneConfig(steps=8))


def test_star_drawing_stays_outside_the_world():
    from PIL import Image, ImageDraw

    from helpers.world.scenes import KINDS, sample_scene

    assert all(shape != "star" for _, shape in KINDS)
    before = sample_scene(5).image.tobytes()
    scene = star_scene(3)
    assert any(o.shape == "star" for o in scene.objects)
    assert sample_scene(5).image.tobytes() == before
    image = Image.new("RGB", (40, 40))
    x0, y0, x1, y1 = draw_star(ImageDraw.Draw(image), "red", (4, 4, 36, 36))
    assert 4 <= x0 < x1 <= 36 and y0 == 4
    with pytest.raises(ValueError, match="needs a colour"):
        draw_star(ImageDraw.Draw(image), "orange", (4, 4, 36, 36))


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "argument --steps: must be at least 1, got 0"),
    (["--minutes", "0"], "argument --minutes: must be a number above 0"),
    (["--batch-size", "0"], "argument --batch-size"),
    (["--rank", "0"], "argument --rank"),
    (["--threads", "0"], "argument --threads"),
    (["--held-out-images", "0"], "argument --held-out-images"),
    (["--train-images", "-1"], "argument --train-images"),
    (["--world-images", "x"], "argument --world-images: must be a whole number, got 'x'"),
    (["--out", "used"], "output folder 'used' is not empty; choose a new folder\n"),
    (["--out", "a_file"], "is a file"),
    (["--data", "a_file"], "--data 'a_file' is a file"),
    (["--data", "out/data"], "must not be --out 'out' or inside it"),
    # write_coco used to put train.json, held_out.json and images/ into any folder, replacing files of those names
    (["--data", "used"], "--data 'used' holds files that finetune-demo did not write; give a new or empty folder, or "
                         "one an earlier finetune-demo wrote (its data is replaced)\n"),
])
def test_demo_checks_its_arguments_before_writing_anything(tmp_path, monkeypatch, capsys, args, message):
    """`finetune-demo` with a bad option stops at once (exit 2): no data drawn or written (it used to write 6 240
    images into ./finetune-stars-data and score the base before failing), no model loaded."""
    import os

    import helpers.grounding.model
    from helpers.world import new_kinds

    monkeypatch.chdir(tmp_path)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(new_kinds, "write_coco", lambda *a, **k: pytest.fail("data was written"))
    monkeypatch.setattr(helpers.grounding.model, "load", lambda *a, **k: pytest.fail("a model was loaded"))
    before = sorted(os.listdir(tmp_path))
    argv = ["--out", "out"] + args
    assert new_kinds.main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("python -m helpers finetune-demo: error: ")
    assert message in err
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "used") == ["keep.txt"]


def test_demo_data_goes_to_a_new_or_empty_folder_or_one_it_wrote_before(tmp_path, monkeypatch, capsys):
    """The default --data is one folder for every run: a folder holding only what write_coco wrote is taken again
    (a file of its own name in images/ is not enough to make another folder its own)."""
    from helpers.world import new_kinds

    runs = []
    monkeypatch.setattr(new_kinds, "_run", lambda args, *rest: runs.append(args.data) or 0)
    monkeypatch.chdir(tmp_path)
    earlier = tmp_path / "earlier"
    write_coco(earlier, 2, seed=7, name="train", world_scenes=1)
    write_coco(earlier, 1, seed=8, name="held_out")
    (tmp_path / "empty").mkdir()
    for data in ("new", "empty", "earlier"):
        assert new_kinds.main(["--out", f"out_{data}", "--data", data, "--steps", "1"]) == 0
    assert runs == [Path("new"), Path("empty"), Path("earlier")]
    (earlier / "images" / "notes.txt").write_text("mine")
    assert new_kinds.main(["--out", "out", "--data", "earlier", "--steps", "1"]) == 2
    assert "--data 'earlier' holds files that finetune-demo did not write" in capsys.readouterr().err
    assert len(runs) == 3


def test_qlora_on_a_4bit_base_trains_and_loads(tiny_model_dir, coco, tmp_path):
    """QLoRA: bitsandbytes 4-bit (NF4) base, gradient checkpointing, adapters in float32 (bitsandbytes runs on the
    CPU)."""
    import torch

    from helpers.grounding.model import load

    out = tmp_path / "qlora"
    model, _, card = finetune(tiny_model_dir, read_coco(*coco), out,
                              FinetuneConfig(steps=2, batch_size=2, quantization="nf4", device="cpu"),
                              progress=False, log=lambda s: None)
    assert card["quantization"] == "nf4" and card["steps"] == 2
    # a 4-bit weight counts by its shape, not by its packed storage (two weights a byte)
    full, _ = load(str(tiny_model_dir), device="cpu", verbose=False)
    assert card["all_parameters"] == full.load_info.parameters + card["trainable_parameters"]
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    # the adapters trained: peft starts every lora_B at zero (the adapters add nothing), two steps move them
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().max() > 0 for p in lora_b)
    tuned, _ = load(str(tiny_model_dir), adapter=out, quantization="nf4", device="cpu", verbose=False)
    assert tuned.load_info.quantization == "nf4" and tuned.load_info.adapter == str(out)
    # the loaded adapters are the trained ones
    trained = {n: p for n, p in model.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in tuned.named_parameters() if "lora_" in n}
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[n].float(), trained[n]) for n in trained)


def test_a_bf16_run_computes_in_bfloat16_and_keeps_float32_adapters(tiny_model_dir, coco, tmp_path, monkeypatch):
    import torch

    seen: list[torch.dtype] = []
    original = torch.nn.Linear.forward

    def recording(self, x):
        y = original(self, x)
        seen.append(y.dtype)
        return y

    monkeypatch.setattr(torch.nn.Linear, "forward", recording)
    model, _, card = finetune(tiny_model_dir, read_coco(*coco), tmp_path / "bf16",
                              FinetuneConfig(steps=2, batch_size=2, bf16=True, device="cpu"),
                              progress=False, log=lambda s: None)
    assert torch.bfloat16 in seen
    assert card["config"]["bf16"] is True and card["steps"] == 2
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    assert all(h["loss"] == h["loss"] for h in card["history"])  # no NaN


@pytest.mark.parametrize("quantization, asked, expected", [
    (None, None, False), (None, True, True), ("nf4", None, True), ("nf4", False, False)])
def test_gradient_checkpointing_is_set_as_asked_without_a_deprecation_warning(tiny_model_dir, quantization, asked,
                                                                                expected):
    import warnings

    from helpers.grounding.finetune import _with_adapters
    from helpers.grounding.model import load

    model, _ = load(str(tiny_model_dir), quantization=quantization or "none", device="cpu", verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers 5 deprecates gradient_checkpointing_enable
        tuned = _with_adapters(model, FinetuneConfig(quantization=quantization, gradient_checkpointing=asked,
                                                     device="cpu"))
    assert tuned.base_model.model.is_gradient_checkpointing is expected


def test_box_accuracy_counts_every_object_of_a_group_and_caption_boxes_that_hit(tmp_path, monkeypatch):
    """box_accuracy on hand-made answers: comprehension scores every object of a group (here the second of two
    cats is boxed, the first not: 1 of 2), and caption_box_hit needs the named object's box to hit (the dog is
    named with a box in the wrong place: a miss, though the phrase is recalled)."""
    from PIL import Image

    import helpers.grounding.model
    from helpers.grounding.finetune import AnnotatedObject, ImageRecord, box_accuracy
    from helpers.grounding.prompts import CAPTION_PROMPT, comprehension_prompt
    from test_caption_errors import caption as answer  # a Grounding from (phrase, boxes) pairs

    cat, dog = Category(1, "cat", "cats"), Category(2, "dog", "dogs")
    cat1, cat2 = (AnnotatedObject(cat, (0.0, 0.0, 0.25, 0.25), "two cats"),
                  AnnotatedObject(cat, (0.5, 0.5, 0.75, 0.75), "two cats"))
    dog1 = AnnotatedObject(dog, (0.0, 0.5, 0.25, 0.75), "a dog")
    Image.new("RGB", (40, 40), "white").save(tmp_path / "pets.png")
    record = ImageRecord(tmp_path / "pets.png", 40, 40, 1, [[cat1, cat2], [dog1]])

    comprehension = {comprehension_prompt("the cats"): answer(("the cats", [cat2.box])),
                     comprehension_prompt("the dog"): answer(("the dog", [dog1.box]))}
    caption = answer(("two cats", [cat1.box]), ("a dog", [(0.5, 0.0, 0.75, 0.25)]))

    def fake_ground(model, processor, images, prompts, **kwargs):
        assert all(im.size == (40, 40) for im in images)
        if prompts == CAPTION_PROMPT:
            return [caption for _ in images]
        return [comprehension[p] for p in prompts]

    monkeypatch.setattr(helpers.grounding.model, "ground", fake_ground)
    assert box_accuracy(None, None, [record]) == {
        "objects": 3,
        "comprehension_box_hit": {"rate": 0.6667, "hits": 2, "total": 3},  # cat2 and the dog; cat1 missed
        "caption_box_hit": {"rate": 0.3333, "hits": 1, "total": 3},  # cat1 only (all three phrases recalled)
    }
    assert box_accuracy(None, None, [record], only=lambda o: o.category is dog) == {
        "objects": 1,
        "comprehension_box_hit": {"rate": 1.0, "hits": 1, "total": 1},
        "caption_box_hit": {"rate": 0.0, "hits": 0, "total": 1},
    }

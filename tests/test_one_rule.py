"""Each rule of the package is written once: the box type and its checks, the image-size check, the
user-box rule, Kosmos-2's prompts, the metrics table, the results record, the world's texts and drawing, the
quantizations fine-tuning takes and the learning-rate schedule. The other modules use those
definitions; these tests fail when a copy creeps back in, and check that the users give the same answer."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from helpers.course.paths import repo_root
from helpers.grounding import boxes, prompts

HELPERS = repo_root() / "helpers"


def _sources() -> dict[str, str]:
    return {str(p.relative_to(HELPERS)): p.read_text("utf-8") for p in sorted(HELPERS.rglob("*.py"))}


def _code(text: str) -> str:
    """The module's code without comments and docstrings (what runs, not what explains it)."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body[0] = ast.Pass()
    return ast.unparse(tree)


@pytest.mark.parametrize("pattern, home", [
    (r"^Box\s*=", "grounding/boxes.py"),                                     # the box type
    (r"two positive ints", "grounding/boxes.py"),                            # the image-size check
    (r"x1\s*>\s*x0|x0\s*<\s*x1\s+and|box\[2\]\s*>\s*box\[0\]", "grounding/boxes.py"),  # a box has an area
    (r"<phrase>\.\+\?</phrase>|count\(.<phrase>.\)|.<phrase>. (not )?in ", "grounding/prompts.py"),  # phrases
    (r"<grounding> An image of|Describe this image in detail|Question: What is", "grounding/prompts.py"),
    (r"\| metric \| result \| bar \|", "grounding/evaluation.py"),          # the metrics table
    (r".generated.:", "course/outputs.py"),                                  # the results record
    (r"a number above 0|must be a positive number|a number > 0", "grounding/checks.py"),  # a number above 0
    (r"numbers\.Real\) and \(?not isinstance\(v, bool\)|def _is_number", "grounding/boxes.py"),  # a bare box
    (r"must be a PIL\.Image\.Image \(load", "grounding/images.py"),          # a usable PIL image
    (r"<=\s*(quantization\.)?INT4_HQQ_MAX_PARAMETERS", "grounding/quantization.py"),  # HQQ or min-max scales
    (r"PackageNotFoundError", "grounding/quantization.py"),                 # an installed package's version
    (r"range\(60\)|randint\(96, 192\)", "world/scenes.py"),               # a scene's size and placement
    (r"^\s*HELD_OUT_SEED\s*[:=]", "grounding/evaluation.py"),            # the world's held-out seed
])
def test_a_rule_lives_in_one_module(pattern: str, home: str) -> None:
    where = [name for name, text in _sources().items() if re.search(pattern, _code(text), re.M)]
    assert where == [home], f"{pattern!r} is written in {where}, expected only in {home}"


def test_the_modules_import_the_shared_definitions() -> None:
    """Each name is looked for as a whole word in the code (a bare substring found ``check_image`` inside
    ``check_image_size``, and in comments and docstrings)."""
    code = {name: _code(text) for name, text in _sources().items()}
    uses = {
        "from helpers.grounding.boxes import Box": ["grounding/tokens.py", "grounding/plotting.py",
                                                    "grounding/refcoco.py", "world/scenes.py", "course/solutions.py",
                                                    "course/solutions_more.py"],
        "check_with_area": ["grounding/tokens.py", "grounding/model.py", "grounding/prompts.py", "world/scenes.py"],
        "check_image_size": ["grounding/plotting.py", "world/scenes.py", "course/solutions.py", "course/batch.py"],
        "user_box_entry": ["course/batch.py", "course/playground.py", "course/cli.py"],
        "phrase_count": ["grounding/model.py"],
        "metrics_table": ["world/modelcard.py"],
        "is_one_box": ["grounding/tokens.py", "grounding/evaluation.py", "grounding/plotting.py", "grounding/model.py"],
        "check_image": ["grounding/plotting.py", "course/article.py", "course/playground.py"],
        "uses_hqq": ["grounding/onnx_decoder.py"],
        "installed_version": ["course/colab.py"],
        "normalized_to_coco": ["world/new_kinds.py"],
        "place_objects": ["world/new_kinds.py"],
        "check_positive_int": ["grounding/tokens.py", "grounding/plotting.py", "grounding/images.py",
                               "grounding/model.py", "world/language.py", "course/batch.py", "course/distributed.py"],
        "is_positive_int": ["grounding/boxes.py"],
        "check_positive_number": ["grounding/images.py", "grounding/finetune.py"],
        "grounding_record": ["course/batch.py", "course/distributed.py"],
        "from helpers.grounding.prompts import": ["grounding/model.py", "grounding/evaluation.py",
                                                  "grounding/refcoco.py", "world/language.py", "world/modelcard.py",
                                                  "course/cli.py", "course/distributed.py", "course/playground.py"],
    }
    for name, users in uses.items():
        missing = [u for u in users if not re.search(rf"\b{re.escape(name)}\b", code[u])]
        assert not missing, f"{missing} do not use {name}"


def test_the_names_of_a_runs_record_and_of_an_evaluation_file_are_written_once() -> None:
    """``training.json`` is ``training.RECORD_FILE`` (the command and the model card used to spell it out each), and
    the evaluation file of a seed is ``modelcard.evaluation_file`` (its conditional was written twice)."""
    code = {name: _code(text) for name, text in _sources().items()}
    record = [name for name, text in code.items() if re.search(r"['\"]training\.json['\"]", text)]
    assert record == ["world/training.py"]
    assert sum(len(re.findall(r"evaluation-seed\{", text)) for text in code.values()) == 1
    from helpers.grounding.evaluation import HELD_OUT_SEED
    from helpers.world.modelcard import evaluation_file
    from helpers.world.training import RECORD_FILE

    assert RECORD_FILE == "training.json"
    assert (evaluation_file(HELD_OUT_SEED), evaluation_file(7)) == ("evaluation.json", "evaluation-seed7.json")


def test_a_training_run_and_its_checkpoints_are_saved_by_one_function() -> None:
    """``training.save_run`` writes the model, the processor, the heads and the record; the checkpoint and the end of
    the command each wrote the four themselves."""
    tree = ast.parse((HELPERS / "world" / "training.py").read_text("utf-8"))
    writers = {"save_pretrained", "save_heads", "write_record"}
    callers = sorted({(function.name, getattr(call.func, "attr", getattr(call.func, "id", None)))
                      for function in ast.walk(tree) if isinstance(function, ast.FunctionDef)
                      for call in ast.walk(function) if isinstance(call, ast.Call)
                      and getattr(call.func, "attr", getattr(call.func, "id", None)) in writers})
    assert callers == [("save_run", name) for name in sorted(writers)]


# ----------------------------------------------------------------------------- same rule, same answers


def test_every_user_box_path_refuses_a_box_without_area_the_same_way(tiny_model) -> None:
    from helpers.course.playground import Playground
    from helpers.grounding.model import ground
    from helpers.world.scenes import sample_scenes

    model, processor = tiny_model
    flat = (0.2, 0.3, 0.6, 0.3)
    with pytest.raises(ValueError) as expected:
        prompts.user_box_entry(prompts.GENERATION_PROMPT, flat)
    image = sample_scenes(1, seed=1)[0].image
    with pytest.raises(ValueError) as from_ground:
        ground(model, processor, image, prompts.GENERATION_PROMPT, bboxes=[[flat]])
    with pytest.raises(ValueError) as from_playground:
        Playground(model, processor).run(image=image, prompt=prompts.GENERATION_PROMPT, box=flat)
    assert str(from_ground.value) == str(from_playground.value) == str(expected.value)
    assert "has no area" in str(expected.value)


def test_the_user_box_goes_to_the_first_phrase_only() -> None:
    two = "<grounding><phrase> It</phrase> is next to<phrase> this</phrase>"
    assert prompts.phrase_count(two) == 2
    assert prompts.user_box_entry(two, (0.1, 0.2, 0.5, 0.6)) == [(0.1, 0.2, 0.5, 0.6), None]
    with pytest.raises(ValueError, match="needs a <phrase>"):
        prompts.user_box_entry(prompts.CAPTION_PROMPT, (0.1, 0.2, 0.5, 0.6))


def test_a_box_without_a_phrase_to_attach_to_is_refused_the_same_way_everywhere() -> None:
    """with_box (training texts) used to give the prompt back unchanged, the box silently dropped."""
    box = (0.1, 0.2, 0.5, 0.6)
    for prompt in (prompts.CAPTION_PROMPT, "<grounding><phrase></phrase> is"):  # no phrase; an empty one
        with pytest.raises(ValueError) as expected:
            prompts.user_box_entry(prompt, box)
        with pytest.raises(ValueError) as written:
            prompts.with_box(prompt, box)
        assert str(written.value) == str(expected.value) and (
            "phrase is empty" if "<phrase></phrase>" in prompt else "needs a <phrase>") in str(expected.value)
    two = "<grounding><phrase> It</phrase> is next to<phrase> this</phrase>"
    assert prompts.with_box(two, box) == two.replace("</phrase>", "</phrase>" + prompts.object_tokens([box]), 1)


def test_one_image_size_rule_for_plots_boxes_and_scenes() -> None:
    import numpy as np

    from helpers.course.solutions import entity_boxes_px
    from helpers.grounding.plotting import draw_user_box
    from helpers.grounding.tokens import parse_generation
    from helpers.world.scenes import draw_scene

    numpy_size = (np.int64(64), np.int64(48))
    assert boxes.check_image_size(numpy_size) == (64, 48)
    assert boxes.to_pixels((0, 0, 1, 1), numpy_size) == (0.0, 0.0, 64.0, 48.0)
    scene = draw_scene([], size=numpy_size)
    assert scene.image.size == (64, 48)
    assert draw_user_box(scene.image, (0.1, 0.1, 0.5, 0.5)).size == (64, 48)
    grounding = parse_generation("<phrase> a dot</phrase><object><patch_index_0000><patch_index_1023></object>")
    assert entity_boxes_px(grounding, numpy_size) == [("a dot", [(1, 1, 63, 47)])]  # bin centres
    for bad in [(64,), (0, 48), (64.0, 48), (True, 48), "64x48"]:
        with pytest.raises(ValueError, match=r"must be \(width, height\), two positive ints"):
            boxes.check_image_size(bad)


def test_metrics_table_is_the_one_the_model_card_prints() -> None:
    from helpers.grounding.evaluation import METRICS, metrics_table
    from helpers.world import modelcard

    result = {"scenes": 2, "objects": 3, **{key: {"hits": 1, "total": 3} for _, key, _ in METRICS}}
    table = metrics_table(result)
    assert table.count("33.3 % (1/3)") == len(METRICS)
    assert modelcard.metrics_table is metrics_table
    assert not hasattr(modelcard, "evaluation_table")


def test_one_rule_for_a_number_above_zero_in_load_image_and_finetune() -> None:
    """load_image's time-out and finetune's learning rate used to be checked by two copies of the rule, one of which
    let infinity through."""
    import numpy as np
    from PIL import Image

    from helpers.grounding.checks import check_positive_number
    from helpers.grounding.finetune import FinetuneConfig, FinetuneError, check_config
    from helpers.grounding.images import load_image

    image = Image.new("RGB", (8, 8))
    for good in (1, 0.5, 3e-4):
        check_positive_number("lr", good)
        check_config(FinetuneConfig(steps=1, lr=good))
        assert load_image(image, timeout=good).size == (8, 8)
    for bad in (0, -1, 0.0, float("inf"), float("nan"), True, "1", None, np.float32(0.5)):
        with pytest.raises(ValueError) as expected:
            check_positive_number("lr", bad)
        assert str(expected.value) == f"lr must be a number above 0, got {bad!r}"
        with pytest.raises(FinetuneError) as from_config:
            check_config(FinetuneConfig(steps=1, lr=bad))  # type: ignore[arg-type]
        with pytest.raises(ValueError) as from_image:
            load_image(image, timeout=bad)  # type: ignore[arg-type]
        assert str(from_config.value) == str(expected.value)
        assert str(from_image.value) == str(expected.value).replace("lr", "timeout", 1)
    check_positive_number("minutes", None, none_ok=True)
    with pytest.raises(ValueError, match=r"^minutes must be a number above 0 or None, got 0$"):
        check_positive_number("minutes", 0, none_ok=True)


# ----------------------------------------------------------------------------- fine-tuning and the world


@pytest.mark.parametrize("pattern, home", [
    (r"' and' \+ \w+\[-1\]", "grounding/prompts.py"),                             # a caption's list of phrases
    (r"<phrase> \{[^}]*\}</phrase>' \+ object_tokens\(", "grounding/prompts.py"),   # a phrase with its boxes
    (r" It is \{", "grounding/prompts.py"),                                       # a question's answer
    (r"\* 0\.55\b", "world/scenes.py"),                                           # the outline colour
])
def test_the_worlds_texts_and_drawing_live_in_one_module(pattern: str, home: str) -> None:
    """finetune.texts_for and new_kinds.draw_star used to carry copies of these (a change in one would silently
    change what fine-tuning teaches the bundled model). The grounded-text format lives on the grounding side, which
    imports nothing of the world (tests/test_finetune.py); the world's language uses it."""
    where = [name for name, text in _sources().items() if re.search(pattern, _code(text), re.M)]
    assert where == [home], f"{pattern!r} is written in {where}, expected only in {home}"


def test_fine_tuning_texts_of_a_world_scene_are_the_worlds_own() -> None:
    from helpers.grounding.finetune import AnnotatedObject, Category, ImageRecord, texts_for
    from helpers.grounding.prompts import qa_answer
    from helpers.world import language
    from helpers.world.scenes import sample_scenes

    for scene in sample_scenes(40, seed=11):
        categories = {o.name: Category(i, o.name, "snowmen" if o.name == "snowman" else o.name + "s")
                      for i, o in enumerate(scene.objects)}
        groups = [[AnnotatedObject(categories[o.name], o.box, o.phrase) for o in g] for g in scene.groups]
        texts = texts_for([ImageRecord(Path("scene.png"), *scene.image.size, scene.seed, groups)])
        assert [t.answer for t in texts if t.task == "caption"] == [language.caption_answer(scene)]
        assert [t.answer for t in texts if t.task == "question"] == [
            qa_answer(language.answer_name(o)) for o in scene.objects]


def test_star_scenes_use_the_worlds_seed_stride() -> None:
    from helpers.world import new_kinds, scenes

    assert new_kinds.SEED_STRIDE is scenes.SEED_STRIDE
    assert "1000003" not in _code(_sources()["world/new_kinds.py"])
    second = scenes.sample_scenes(2, seed=3)[1]
    assert second.objects == scenes.sample_scene(3 * scenes.SEED_STRIDE + 1).objects


def test_fine_tuning_takes_one_list_of_quantizations() -> None:
    """check_config let any name through to load(), which called it a broken base model (exit 1 on the command
    line) with advice about a dtype fine-tuning chooses itself, or offered seven names fine-tuning cannot use; the
    command line and memory_needed each had their own copy of the two it can."""
    from helpers.grounding import finetune
    from helpers.grounding.finetune import QLORA, BaseModelError, FinetuneConfig, FinetuneError, check_config

    assert QLORA == ("4bit", "nf4")
    for good in (None, *QLORA):
        check_config(FinetuneConfig(steps=1, quantization=good))
    for bad in ("int8", "bogus", "none", ""):
        with pytest.raises(FinetuneError) as refused:
            check_config(FinetuneConfig(steps=1, quantization=bad))
        assert not isinstance(refused.value, BaseModelError)
        assert str(refused.value) == ("quantization must be None (a full-precision base) or a 4-bit base for QLoRA, "
                                      f"one of '4bit', 'nf4'; got {bad!r}")
    action = next(a for a in finetune.build_parser()._actions if a.dest == "quantization")
    assert action.choices is QLORA
    assert len(re.findall(r"'4bit', 'nf4'", _code(_sources()["grounding/finetune.py"]))) == 1


def test_one_learning_rate_schedule_and_one_warm_up_rule_for_training_and_fine_tuning() -> None:
    """finetune refused warmup=0, which train takes as "no warm-up"; both now compute the rate with one function."""
    from helpers.grounding import finetune
    from helpers.grounding.finetune import FinetuneConfig, check_config, cosine_lr
    from helpers.world import training

    assert training.cosine_lr is cosine_lr and training.warmup_lr is finetune.warmup_lr
    check_config(FinetuneConfig(steps=10, warmup=0))
    for warmup in (0, 1):
        assert finetune._schedule(FinetuneConfig(steps=10, lr=1e-3, warmup=warmup), 0, 0.0) == 1e-3
    assert cosine_lr(1e-3, 4, 10, 0.0) == pytest.approx(5e-4)  # half-way through the warm-up
    assert cosine_lr(1e-3, 50, 10, 0.5) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert cosine_lr(1e-3, 50, 10, 1.0) == cosine_lr(1e-3, 50, 10, 3.0) == pytest.approx(5e-5)
    for bad in (-1, 1.5, None):
        with pytest.raises(finetune.FinetuneError, match=r"^warmup must be 0 or more \(a whole number\)"):
            check_config(FinetuneConfig(steps=10, warmup=bad))  # type: ignore[arg-type]


def test_a_yes_or_no_setting_takes_only_true_or_false(tiny_model_dir) -> None:
    from PIL import Image

    from helpers.grounding.checks import check_bool
    from helpers.grounding.images import load_image
    from helpers.grounding.model import load

    check_bool("flag", False)
    check_bool("flag", None, none_means="on by default")
    for value in ("no", 0, None):
        with pytest.raises(TypeError, match=r"^flag must be True or False, got "):
            check_bool("flag", value)
    with pytest.raises(TypeError, match=r"^flag must be True or False \(or None: on by default\), got str: 'no'$"):
        check_bool("flag", "no", none_means="on by default")
    with pytest.raises(TypeError, match=r"^verbose must be True or False, got str: 'no'$"):
        load(tiny_model_dir, verbose="no")
    with pytest.raises(TypeError, match=r"^exif_orientation must be True or False, got int: 1$"):
        load_image(Image.new("RGB", (4, 4)), exif_orientation=1)


def test_load_and_fine_tuning_refuse_another_model_type_with_one_message(tiny_model_dir, tmp_path) -> None:
    import json
    import shutil

    from helpers.grounding.finetune import BaseModelError, check_kosmos2
    from helpers.grounding.model import ModelLoadError, load

    folder = tmp_path / "bert"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    with pytest.raises(ModelLoadError) as loading:
        load(folder, verbose=False)
    with pytest.raises(BaseModelError) as tuning:
        check_kosmos2(folder)
    assert str(loading.value) == str(tuning.value) and "holds a 'bert' model, not Kosmos-2" in str(tuning.value)

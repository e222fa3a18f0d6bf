"""helpers: the code behind the Kosmos-2 grounding course, in three parts.

``helpers.grounding`` — the library a learner calls, for the real Kosmos-2 and the bundled model alike (where the
bundled model and the int4-onnx cache live comes from ``course.paths``; scoring and writing the world's scenes and
``finetune`` use ``helpers.world``: see its docstring):
    boxes       normalized and pixel boxes: the box type, its checks and the image-size check
    checks      argument checks many functions share (a positive int, a number above 0), the command lines'
                option types and how they report bad input, the check of an output path, the one JSON reader and
                the one writer of files
    tokens      Kosmos-2 location tokens (``<patch_index_NNNN>``) and parsing grounded text
    prompts     Kosmos-2's prompts (captions, comprehension, questions about a box, box → words), grounded text
    images      loading images from paths, URLs and bytes (EXIF orientation, size limits)
    plotting    boxes drawn on images, highlighted captions, the location grid
    model       loading a Kosmos-2 model (the real one or the bundled one) and grounding images
    quantization  4-bit and 8-bit weights: bitsandbytes (the article's) and the course's CPU paths
    int8_linear   int8 weights multiplied by torch's own CPU kernel (the int8 path, int4's lm_head)
    onnx_decoder  the text decoder as ONNX Runtime graphs, 4-bit weights per token (the fastest CPU captions)
    evaluation  scoring predicted boxes and captions against the truth, the bundled model on its world's scenes, and
                the runner the benchmark files share
    refcoco     RefCOCO / RefCOCO+ / RefCOCOg files as distributed, and comprehension scored as the paper's authors do
    flickr30k   Flickr30k Entities files, and phrase grounding scored as the paper's authors do
    finetune    fine-tuning Kosmos-2 on your own boxes: LoRA adapters (QLoRA on a 4-bit base)
    progress    when to show progress bars

``helpers.world`` — the synthetic world and the small model trained on it (shipped in ``data/``):
    scenes      the seeded scenes of coloured shapes, the snowman, the fire and Kumo
    language    the world's grounded training texts, tokenizer, processor and model config
    training    the training recipe behind the bundled model
    modelcard   evaluating the bundled model and writing its model card
    new_kinds   stars, a kind the world never had: the fine-tuning demonstration

``helpers.course`` — running the course:
    paths       where the repository, ``data/``, ``notebooks/`` and the bundled model live
    colab       the Google Colab set-up cell every notebook starts with
    article     the article's recorded outputs (``data/article_outputs.json``)
    notebooks   executing the notebooks headless
    outputs     the record of a grounded image, JSON Lines files read and written, and what the main job keeps
                of each notebook's groundings
    mainjob     the main job behind ``make run`` / ``python -m helpers run``
    batch       grounding a folder of images to JSON Lines and annotated PNGs
    cli         the ``python -m helpers ground`` command
    cli_evaluate  the ``python -m helpers evaluate world|refcoco|flickr30k`` command
    distributed batch grounding spread over processes with accelerate
    playground  the interactive playground of notebook 10
    solutions, solutions_more   exercise solutions the notebooks reveal

The names a lesson uses are importable from ``helpers`` itself (``from helpers import load, ground``); they
are looked up on first use, so ``import helpers`` stays cheap and loads no torch. The command line is
``python -m helpers`` (also installed as ``kosmos2-course``); ``python -m helpers --help`` lists its commands.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module that defines it. ``from helpers import X`` imports that module on first use.
_PUBLIC: dict[str, str] = {}
for _module, _names in {
    "grounding.boxes": "Box iou to_pixels to_normalized round_box pixel_error check_normalized check_pixel_box",
    "grounding.tokens": ("Entity Grounding NUM_BINS parse_generation strip_image_prefix location_tokens "
                         "object_tokens box_to_patch_index patch_index_to_box"),
    "grounding.prompts": "CAPTION_PROMPT DETAIL_PROMPT GENERATION_PROMPT comprehension_prompt qa_prompt",
    "grounding.images": "ImageLoadError load_image to_rgb",
    "grounding.plotting": "PALETTE draw_entities draw_user_box highlight_caption draw_grid entity_colour",
    "grounding.model": ("REAL_MODEL ModelLoadError load ground resolve_source real_model_cached try_gpu "
                        "default_dtype Decoding GREEDY AUTHORS_DECODING"),
    "grounding.quantization": "QUANTIZATIONS QuantizationError check_available",
    "grounding.evaluation": ("IOU_THRESHOLD HELD_OUT_SEED Score CaptionScores PhraseScores score_caption "
                             "score_phrase phrase_boxes phrases_match box_hits names_object answer_after evaluate "
                             "METRICS caption_errors count_caption_errors caption_error_table"),
    "grounding.refcoco": ("RefCocoFormatError RefItem load_refcoco scenes_to_refcoco write_refer_files "
                          "write_mdetr_file evaluate_comprehension"),
    "grounding.flickr30k": ("Flickr30kFormatError PhraseItem load_flickr30k_entities scenes_to_flickr30k "
                            "evaluate_phrase_grounding"),
    "grounding.finetune": "FinetuneConfig FinetuneError finetune read_coco texts_for box_accuracy memory_needed",
    "grounding.progress": "interactive",
    "world.scenes": ("KINDS Scene SceneObject sample_scene sample_scenes draw_scene snowman_illustration "
                     "character_illustration definite_phrase kind_name"),
    "world.language": "build_processor build_config scene_examples answer_name",
    "world.training": ("TrainConfig new_model train IGNORE TASK_WEIGHTS attention_targets dense_targets encode_example "
                       "read_training recorded_runs joint_curve"),
    "world.new_kinds": "star_scene write_coco",
    "course.paths": "repo_root data_dir notebooks_dir bundled_model_dir",
    "course.colab": "install_extra",
    "course.article": "article_outputs draw_like_the_article",
    "course.batch": "ground_folder read_results contact_sheet",
    "course.distributed": "ground_distributed",
    "course.playground": "Playground looks_in_world in_world_score IN_WORLD_THRESHOLD",
}.items():
    for _name in _names.split():
        _PUBLIC[_name] = f"{__name__}.{_module}"
del _module, _names, _name

importlib.import_module(f"{__name__}.grounding.quantization").silence_import_notices()  # loads no torch

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'helpers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))

"""helpers: everything the Kosmos-2 grounding course notebooks import.

Importing this package is cheap: it loads no torch or transformers. Import the submodule you need.

Submodules:
    paths       where the repository, ``data/``, ``notebooks/`` and the bundled offline model live
    colab       the Google Colab set-up (the one set-up cell every notebook carries)
    boxes       normalized and pixel boxes
    tokens      Kosmos-2 location tokens (``<patch_index_NNNN>``) and grounded text
    synthetic   the small, seeded synthetic world the bundled model was trained on
    world       grounded training texts, tokenizer, processor and model config for that world
    training    the training recipe behind the bundled model
    model       loading a Kosmos-2 model (the real one or the bundled one) and grounding images
    evaluation  scoring predicted boxes against the truth
    progress    when to show progress bars
    images      loading images from paths, URLs and bytes (EXIF orientation, size limits)
    plotting    boxes drawn on images, highlighted captions, the location grid
    article     the article's recorded outputs (``data/article_outputs.json``)
    batch       grounding a folder of images to JSON Lines and annotated PNGs
    cli_ground  the ``python -m helpers ground`` command
    refcoco     RefCOCO-style annotation files and comprehension accuracy
    playground  the interactive playground of notebook 10
    distributed batch grounding spread over processes with accelerate
    modelcard   evaluating the bundled model and writing its model card
    notebooks   executing the notebooks headless
    outputs     what notebooks record for the main job
    solutions, solutions_more   exercise solutions the notebooks reveal
    mainjob     the main job behind ``make run`` / ``python -m helpers run``

The command line is ``python -m helpers`` (also installed as ``kosmos2-course``).
"""

__version__ = "0.1.0"

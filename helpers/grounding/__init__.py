"""The grounding library: boxes, location tokens, Kosmos-2's prompts, images, plots, loading and running
the model, and scoring its boxes. It works the same for the real Kosmos-2 and the bundled model (see
``helpers``' docstring for the map).

It leans on the rest of the package in three ways. :mod:`helpers.course.paths` says where the bundled model
(``model``) and the cache of int4-onnx graphs (``onnx_decoder``) live; importing those two modules imports it.
``quantization`` names the packages of the course's ``quant`` extra as :mod:`helpers.course.colab` reads them
from ``pyproject.toml`` (imported when a check needs them).
The synthetic world (:mod:`helpers.world`) is imported inside the functions that need it: scoring the world's
scenes (``evaluation.evaluate``, ``evaluate_captions`` and the caption errors), writing them as a benchmark's files
(``refcoco.scenes_to_refcoco``) and ``finetune.finetune``, which encodes its texts with the world's training
recipe (:func:`helpers.world.training.encode_example` and ``collate``)."""

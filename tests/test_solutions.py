"""helpers.course.solutions: the exercise solutions use the library's own rules."""

from __future__ import annotations

import pytest
from PIL import Image

import helpers.course.solutions
from helpers.course.solutions import ask_about_box
from helpers.grounding.tokens import parse_generation


@pytest.mark.parametrize("noun, answer", [("object", "a red circle."), ("Answer: label", "a red circle."),
                                          ("object", "")])
def test_ask_about_box_takes_the_answer_after_the_prompts_answer_marker(monkeypatch, noun, answer) -> None:
    """The answer is cut as evaluation.answer_after cuts it: after the prompt's "Answer:", however many the
    prompt holds. A noun holding "Answer:" used to cut the question in two ("label? Answer: a red circle.")."""
    asked = []

    def fake_ground(model, processor, image, prompt, **kwargs):
        asked.append((prompt, kwargs["bboxes"]))
        return [parse_generation(f"<image>.</image>{prompt} {answer}")]

    monkeypatch.setattr(helpers.course.solutions, "ground", fake_ground)
    text, grounding = ask_about_box(None, None, Image.new("RGB", (200, 100)), (20, 10, 120, 60), noun)
    assert text == answer
    assert grounding.caption.endswith(f"Answer: {answer}".rstrip())
    assert asked == [(f"<grounding> Question: What is<phrase> this {noun}</phrase>? Answer:", [[(0.1, 0.1, 0.6, 0.6)]])]

"""A VLM's answer made into a caption: reasoning, openers and loops, on crafted answers."""

from __future__ import annotations

import pytest

from image2prompt.prompt.answers import clean_answer, cut_loops, strip_opener, strip_reasoning


@pytest.mark.parametrize(("answer", "caption"), [
    ("<think>The user wants a caption. I see a dog.</think>A brown dog on a beach.", "A brown dog on a beach."),
    ("<THINKING>hmm\nlet me look</THINKING>\n\nA red car.", "A red car."),
    ("<think>still thinking when max_tokens ran out", ""),  # only an unfinished block: no answer
    ("I see trees and a lake.</think> A lake in a pine forest.", "A lake in a pine forest."),  # prefilled <think>
    ("No reasoning here, just a cat.", "No reasoning here, just a cat."),
])
def test_reasoning_blocks_are_removed(answer: str, caption: str) -> None:
    assert " ".join(strip_reasoning(answer).split()) == caption


@pytest.mark.parametrize(("answer", "caption"), [
    ("This image shows a woman reading in a cafe.", "a woman reading in a cafe."),
    ("The photograph depicts an old lighthouse at dusk.", "an old lighthouse at dusk."),
    ("Sure! Here is a descriptive caption for this image: A foggy harbour.", "A foggy harbour."),
    ("Here's a caption: two kids flying a kite", "two kids flying a kite"),
    ("A portrait that shows a man in a hat.", "A portrait that shows a man in a hat."),  # not at the start
    ("This image shows", "This image shows"),  # nothing after it: kept
])
def test_openers_are_removed(answer: str, caption: str) -> None:
    assert strip_opener(answer) == caption


@pytest.mark.parametrize(("answer", "caption"), [
    ("a dense jungle jungle jungle jungle jungle jungle", "a dense jungle"),
    ("a cat, a cat, a cat, a cat, sitting", "a cat"),
    ("lush green trees, tall grass, lush green trees, tall grass, lush green trees, tall grass, and",
     "lush green trees, tall grass"),
    ("a very very good dog", "a very very good dog"),  # twice is English, not a loop
    ("", ""),
])
def test_repetition_loops_are_cut_after_their_first_occurrence(answer: str, caption: str) -> None:
    assert cut_loops(answer) == caption


def test_clean_answer_does_it_all_and_gives_one_line() -> None:
    answer = ("<think>\nOk, describe it.\n</think>\n\nThis image shows a misty mountain valley\nwith a river, "
              "river, river, river, river, river")
    assert clean_answer(answer) == "a misty mountain valley with a river"
    assert "\n" not in clean_answer("line one\nline two\r\n\tline three")
    assert clean_answer("<think>never finished") == ""

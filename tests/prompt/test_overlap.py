"""What a caption already says: phrases in its own words, and its clauses."""

from __future__ import annotations

from image2prompt.prompt.overlap import clauses, content_words, says


def test_a_phrase_in_the_captions_words_is_said() -> None:
    words = content_words("A watercolor painting of two red foxes in soft morning light.")
    assert says(words, "watercolor painting")
    assert says(words, "red fox")  # plurals folded
    assert says(words, "morning light")
    assert not says(words, "oil painting")  # one word more than the caption says
    assert not says(words, "of the")  # no content word: never said
    assert content_words("Glass, grass and gas") == {"glass", "grass", "gas"}  # "ss" is not a plural
    assert content_words("skies, dresses, churches, trees, bus") == {"sky", "dress", "church", "tree", "bus"}


def test_clauses() -> None:
    assert clauses("A fox in the snow, with a red scarf and a hat. Dramatic lighting") == [
        "A fox in the snow", "a red scarf", "a hat", "Dramatic lighting"]
    assert clauses("") == [] and len(clauses(", ".join(["word"] * 40))) == 12

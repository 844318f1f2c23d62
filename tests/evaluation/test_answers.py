"""Answer extraction and scoring on hand-written cases: right, wrong, malformed, several
numbers, boxed expressions."""

import pytest

from nextblock.evaluation.answers import (extract_boxed, extract_number, gsm8k_reference,
                                          math_equal, numbers_equal)


def test_gsm8k_reference():
    assert gsm8k_reference("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gsm8k_reference("...\n#### 1,234") == "1234"
    assert gsm8k_reference("#### -5") == "-5"
    with pytest.raises(ValueError):
        gsm8k_reference("no answer here")


@pytest.mark.parametrize("text,number", [
    ("The answer is 72.", "72"),
    ("First 3 apples, then 4 more, so 7 apples in total.", "7"),  # several: the last
    ("She pays $1,234.50 for it", "1234.5"),
    ("It is -12 degrees", "-12"),
    ("Total: 5.00", "5"),
    ("0.5 of them", "0.5"),
    ("I don't know", None),  # malformed: no number
    ("", None),
])
def test_extract_number(text, number):
    assert extract_number(text) == number


def test_numbers_equal():
    assert numbers_equal("5", "5.0") and numbers_equal("1234.5", "1234.50")
    assert not numbers_equal("5", "6") and not numbers_equal(None, "5")
    assert not numbers_equal("abc", "5")


@pytest.mark.parametrize("text,boxed", [
    (r"so $x = \boxed{3}$.", "3"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{1} then \boxed{2}", "2"),  # the last one
    (r"\fbox{\sqrt{2}}", r"\sqrt{2}"),
    (r"\boxed{ \{1, 2\} }", r"\{1, 2\}"),
    (r"\boxed{\frac{1}{2}", None),  # cut off: unbalanced
    ("no box", None),
])
def test_extract_boxed(text, boxed):
    assert extract_boxed(text) == boxed


@pytest.mark.parametrize("pred,ref,ok", [
    (r"\frac{1}{2}", r"\frac12", True),
    (r"\dfrac{1}{2}", r"\frac{1}{2}", True),
    ("0.5", r"\frac{1}{2}", True),
    (r"90^\circ", "90", True),
    (r"\left( 1, 2 \right)", "(1,2)", True),
    ("3", "4", False),
    (r"\sqrt{2}", "2", False),
    (None, "1", False),
    (r"\frac{", "1", False),  # malformed
])
def test_math_equal(pred, ref, ok):
    assert math_equal(pred, ref) is ok

"""Answer extraction and scoring for the math tasks.

    gsm8k_reference("... #### 1,234")            -> "1234"
    extract_number("So she pays $1,234.50.")      -> "1234.5"   (the last number)
    numbers_equal("1234.50", "1234.5")            -> True
    extract_boxed(r"... \\boxed{\\frac{1}{2}}")    -> "\\frac{1}{2}" (the last \\boxed / \\fbox)
    math_equal(r"\\frac{1}{2}", "0.5")             -> True       (math-verify, else strings)

GSM8K: the final number of the completion, after removing thousands separators, currency
and units, compared numerically. MATH-500: the content of the last \\boxed{} (balanced
braces), compared with Hugging Face's `math-verify` (symbolic and numeric equivalence) when
it is installed, else after a documented normalisation (spaces, \\left/\\right, \\dfrac,
trailing period, "^\\circ", "\\%").
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+")


def _clean_number(s: str) -> str | None:
    s = s.replace("$", "").replace(",", "").replace(" ", "")
    try:
        value = float(s)
    except ValueError:
        return None
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def gsm8k_reference(answer: str) -> str:
    """The number after '####' in a GSM8K answer field."""
    tail = answer.split("####")[-1]
    found = _NUMBER.findall(tail)
    if not found:
        raise ValueError(f"no final number in GSM8K answer {answer[-60:]!r}")
    return _clean_number(found[0])


def extract_number(text: str) -> str | None:
    """The last number in a completion (None when there is none)."""
    for raw in reversed(_NUMBER.findall(text)):
        n = _clean_number(raw.rstrip("."))
        if n is not None:
            return n
    return None


def numbers_equal(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(b)))
    except ValueError:
        return False


def extract_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} or \\fbox{...}, braces balanced; None if absent."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: the completion was cut


def _normalise(s: str) -> str:
    s = s.strip().rstrip(".")
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"),
                     ("\\tfrac", "\\frac"), ("^\\circ", ""), ("^{\\circ}", ""), ("\\%", ""),
                     ("\\!", ""), ("\\,", ""), ("$", "")):
        s = s.replace(old, new)
    s = re.sub(r"\\text\{\s*([^}]*)\}", r"\1", s)
    return re.sub(r"\s+", "", s)


def math_equal(prediction: str | None, reference: str) -> bool:
    if prediction is None:
        return False
    if _normalise(prediction) == _normalise(reference):
        return True
    try:
        from math_verify import parse, verify
    except ImportError:
        return False
    try:
        return bool(verify(parse(f"${reference}$"), parse(f"${prediction}$")))
    except Exception:  # noqa: BLE001 - unparsable answers are simply wrong
        return False

"""Graders on edge cases."""

from __future__ import annotations

import time

import pytest

from training.graders import extract_choice, grade_choice, grade_exact, grade_number, grade_python_tests


@pytest.mark.parametrize(("answer", "reference", "expected"), [
    ("Paris", "paris", True), ("  Paris. ", "Paris", True), ("The answer is Paris", "Paris", False),
    ("New   York", "new york", True), ("", "x", False),
])
def test_exact(answer, reference, expected):
    assert grade_exact(answer, reference) is expected


@pytest.mark.parametrize(("answer", "reference", "expected"), [
    ("She has 3 apples, then buys 4, so 7.", "#### 7", True),
    ("The total is $1,250.", "1250", True),
    ("It is -3", "-3", True),
    ("2.50 dollars", "2.5", True),
    ("first 7 then 8", "7", False),  # the last number counts
    ("no number here", "7", False),
    ("7", "no reference number", False),
])
def test_number(answer, reference, expected):
    assert grade_number(answer, reference) is expected


@pytest.mark.parametrize(("answer", "letter"), [
    ("The answer is (B).", "B"), ("Answer: C", "C"), ("D. Because mitochondria...", "D"), ("(A)", "A"),
    ("I think B is right", "B"), ("A or B, hard to say", None), ("answer is b", "B"),
    ("Both C and D seem plausible", None), ("none of them", None),
])
def test_choice_extraction(answer, letter):
    assert extract_choice(answer) == letter


def test_choice_grading():
    assert grade_choice("The answer is (B)", "B")
    assert not grade_choice("A or B", "B")  # several letters, no commitment
    assert not grade_choice("no idea", "B")


TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"


def test_python_tests_pass_and_fail():
    assert grade_python_tests("```python\ndef add(a, b):\n    return a + b\n```", TESTS)
    assert grade_python_tests("def add(a, b):\n    return a + b", TESTS)  # no fence: the whole answer
    assert not grade_python_tests("```python\ndef add(a, b):\n    return a - b\n```", TESTS)
    assert not grade_python_tests("this is not code", TESTS)


def test_python_tests_time_limit():
    started = time.monotonic()
    assert not grade_python_tests("def add(a, b):\n    while True:\n        pass", TESTS, timeout_s=2)
    assert time.monotonic() - started < 6


def test_python_tests_have_no_network_and_bounded_memory():
    network = ("import socket\ndef add(a, b):\n    socket.create_connection(('127.0.0.1', 80), timeout=1)\n"
               "    return a + b")
    assert not grade_python_tests(network, TESTS)
    raw_socket = "import socket\ns = socket.socket()\ndef add(a, b):\n    return a + b"
    assert not grade_python_tests(raw_socket, TESTS)
    hog = "x = bytearray(4 * 1024 * 1024 * 1024)\ndef add(a, b):\n    return a + b"
    assert not grade_python_tests(hog, TESTS, memory_bytes=512 * 1024 * 1024)

"""Graders for collected answers: does an answer match a question's reference?

- ``exact``: the normalised answer (case, spacing, surrounding punctuation) equals the reference
- ``number``: the last number in the answer equals the reference's last number (GSM8K style)
- ``choice``: the A/B/C/D letter the answer commits to equals the reference letter (MMLU style)
- ``python-tests``: the answer's code passes the reference's asserts in a subprocess with a time and memory
  limit and no network (HumanEval/MBPP style)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_CHOICE_PATTERNS = [
    re.compile(r"answer\s*(?:is|:)?\s*(?:option\s*)?\(?([A-D])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-D])\)?(?:[.):]|\s*$)"),
]
_LETTER = re.compile(r"(?<![A-Za-z])\(?([A-D])\)?(?![A-Za-z])")


def normalise(text: str) -> str:
    return " ".join(text.strip().strip(".!?\"'`").lower().split())


def grade_exact(answer: str, reference: str) -> bool:
    return normalise(answer) == normalise(reference)


def last_number(text: str) -> float | None:
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        return float(matches[-1].replace(",", ""))
    except ValueError:
        return None


def grade_number(answer: str, reference: str) -> bool:
    got, expected = last_number(answer), last_number(reference)
    return got is not None and expected is not None and abs(got - expected) < 1e-6


def extract_choice(answer: str) -> str | None:
    """The letter an answer commits to: "the answer is (B)", "Answer: B", a leading "B." — else the only
    standalone letter; several different letters with no explicit answer are ambiguous (None)."""
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(answer)
        if found:
            return found.group(1).upper()
    letters = {m.upper() for m in _LETTER.findall(answer) if m.isupper()}
    return letters.pop() if len(letters) == 1 else None


def grade_choice(answer: str, reference: str) -> bool:
    expected = extract_choice(reference) or reference.strip().upper()[:1]
    return extract_choice(answer) == expected


def extract_code(answer: str) -> str:
    """The last fenced code block (```python ... ```), else the whole answer."""
    blocks = re.findall(r"```(?:python|py)?\s*\n(.*?)```", answer, flags=re.DOTALL)
    return blocks[-1] if blocks else answer


# Runs before the candidate's code: no network, bounded memory and CPU.
_SANDBOX = textwrap.dedent("""
    import resource, socket
    resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
    resource.setrlimit(resource.RLIMIT_CPU, ({cpu}, {cpu}))
    def _no_network(*args, **kwargs):
        raise OSError("network access is disabled while grading")
    socket.socket = _no_network
    socket.create_connection = _no_network
    socket.getaddrinfo = _no_network
    del resource, socket
""")


def grade_python_tests(answer: str, reference: str, *, timeout_s: float = 10.0,
                       memory_bytes: int = 1024 * 1024 * 1024) -> bool:
    """Run the answer's code followed by the reference asserts; pass = exit status 0 within the limits."""
    program = "\n".join([_SANDBOX.format(memory=memory_bytes, cpu=int(timeout_s) + 1), extract_code(answer), "",
                         reference, ""])
    with tempfile.TemporaryDirectory(prefix="grade-") as workdir:
        path = os.path.join(workdir, "candidate.py")
        with open(path, "w") as handle:
            handle.write(program)
        try:
            result = subprocess.run([sys.executable, "-I", path], cwd=workdir, capture_output=True, timeout=timeout_s,
                                    env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        except subprocess.TimeoutExpired:
            return False
    return result.returncode == 0


GRADERS: dict[str, Callable[[str, str], bool]] = {
    "exact": grade_exact,
    "number": grade_number,
    "choice": grade_choice,
    "python-tests": grade_python_tests,
}

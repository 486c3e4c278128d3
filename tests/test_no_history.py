"""The project speaks of itself only: no tracked file tells how its work was organised (numbered
sessions of work, numbered tickets of a tracker that is not in the repository) or which machines
and tools it was made with. Its history is kept by date, model version and commit
(docs/experiments.md). Technical uses of the word "session" (onnxruntime's
``InferenceSession``, ``requests.Session``, pytest's ``scope="session"``) are allowed."""

from __future__ import annotations

import re
import subprocess

import pytest

from agegroup.config import PROJECT_ROOT

# Each pattern names one way a file can speak of how the project was made, not of what it is.
# The patterns and the examples below are written so that this file matches none of them.
HISTORY = {
    "a numbered work session": r"\b[Ss]ession(?:s|'s)? #?\d",
    "a numbered issue": r"\b[Ii]ssues? #?\d",
    "a work session": (
        r"(?i)\b(?:this|that|each|every|previous|earlier|later|next|last|another|other|"
        r"no|one|work|working) sessions?(?:'s?)?(?![\w=\"'(])"
    ),
    "hardware lent or borrowed": (
        r"(?i)\b(?:GPU|machine|H100|H200)s? (?:(?:was|were|is) )?lent\b|\blent (?:a|an|the|one) "
        r"(?:GPU|machine)|\bborrowed (?:single )?(?:GPU|H100|H200|machine)"
    ),
    "the tools the project was built with": r"(?i)`device`\s+tool|\bthe\s+device\s+tool\b",
}


def _spaced(*parts: str) -> str:
    # Examples are joined at run time, so that this file holds no example of what it forbids.
    return " ".join(parts)


def history_in(text: str) -> list[str]:
    """The kinds of history ``text`` mentions (the keys of ``HISTORY``)."""
    return [kind for kind, pattern in HISTORY.items() if re.search(pattern, text)]


def _tracked_files() -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True
    ).stdout
    return [name for name in listed.decode().split("\0") if name]


@pytest.mark.parametrize(
    "text",
    [
        _spaced("as measured in session", "12"),
        _spaced("Session", "3: ages"),
        _spaced("the model served until session", "9"),
        _spaced("sessions", "5-9"),
        _spaced("see issue", "15"),
        _spaced("Issue", "12's targets"),
        _spaced("issue", "#7"),
        _spaced("measured on this", "session's machine"),
        _spaced("No GPU was", "lent, so the runs below use float32"),
        _spaced("the age model trained on a borrowed", "GPU"),
        _spaced("a GPU machine", "lent for a few minutes"),
        _spaced("run ON that machine by the `device`", "tool"),
        _spaced("while other", "sessions' tests came and went"),
    ],
)
def test_history_is_recognised(text: str) -> None:
    assert history_in(text), text


@pytest.mark.parametrize(
    "text",
    [
        "session = ort.InferenceSession(path, options)",
        "options = ort.SessionOptions()",
        "self._session.run(None, {'input': x})",
        "with requests.Session() as http:",
        '@pytest.fixture(scope="session")',
        "and that shares the session app's loaded model",
        "options.add_session_config_entry('session.intra_op.allow_spinning', '0')",
        "A BlazeFace network in an onnxruntime session, shared by the server's threads.",
        "an issue tracker's wording is not an issue here",
        "loans a GPU machine to whoever asks",
    ],
)
def test_technical_uses_are_allowed(text: str) -> None:
    assert history_in(text) == [], text


def test_no_tracked_file_speaks_of_how_the_project_was_made() -> None:
    found = []
    for name in _tracked_files():
        path = PROJECT_ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet committed
            continue
        data = path.read_bytes()
        if b"\0" in data:  # binary: model files, images
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            for kind in history_in(line):
                found.append(f"{name}:{number}: {kind}: {line.strip()[:120]}")
    assert found == [], "\n".join(found)

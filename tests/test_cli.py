"""The command ``agegroup predict``: a folder of 20 files (2 unreadable) gives one row per face
and one per unreadable file, exit status 1, and the JSON API's groups; other formats and
stdout; an interrupted run resumed gives the same file; usage errors; ``pip install .`` in a
fresh virtual environment provides the command.

The command runs as a user runs it, in its own process (``python -m agegroup``), with the tiny
exported learner's ONNX twin and the real face detector.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from agegroup.config import PROJECT_ROOT, Settings
from agegroup.factory import create_app
from agegroup.rows import COLUMNS, face_rows, read_rows
from testsupport.batch import photo_folder
from testsupport.batch import predict_command as command
from testsupport.batch import run_command as run
from testsupport.uploads import post

PHOTOS = 18  # and two unreadable files: 20 in all
ONE_THREAD = {"AGE_TORCH_THREADS": "1"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 photos, a text file named notes.jpg, a JPEG cut short; and two files the walk skips."""
    folder = tmp_path_factory.mktemp("photos")
    photo_folder(folder, PHOTOS)
    (folder / "readme.txt").write_text("not a photo's name: skipped")
    (folder / ".hidden.jpg").write_bytes((folder / "01-portrait.png").read_bytes())
    return folder


@pytest.fixture(scope="module")
def model(onnx_dir: Path) -> list[str]:
    return ["--runtime", "onnx", "--model", str(onnx_dir / "export.pkl")]


@pytest.fixture(scope="module")
def api_client(onnx_dir: Path):
    """The web app with the same model and runtime: what the JSON API says."""
    settings = Settings(model_path=onnx_dir / "export.pkl", model_dir=onnx_dir, runtime="onnx")
    return create_app(settings).test_client()


@pytest.fixture(scope="module")
def two_workers(folder: Path, model: list[str], tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("out") / "rows.csv"
    # One inference thread per worker whatever the machine: the other runs compare exactly.
    done = run(command(folder, "--out", out, "--workers", 2, *model), env=ONE_THREAD)
    return out, done


def by_path(rows: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(row["path"], []).append(row)
    return found


def test_a_folder_gives_one_row_per_face_and_per_unreadable_file(two_workers, folder, api_client):
    out, done = two_workers
    assert done.returncode == 1, done.stderr
    assert "photo/s" in done.stderr  # the progress bar, on stderr
    assert "18 of 20 photos read" in done.stderr
    assert "2 could not be read (corrupt_image 1, unsupported_type 1)" in done.stderr
    assert out.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert not out.with_name("rows.csv.partial").exists()
    rows = by_path(list(read_rows(out)))
    names = sorted(p.name for p in folder.iterdir() if p.suffix != ".txt" and p.name[0] != ".")
    assert [Path(path).name for path in rows] == names  # in name order, nothing skipped

    for path, found in rows.items():
        if Path(path).name in ("notes.jpg", "cut-short.jpg"):
            (row,) = found
            code = "unsupported_type" if path.endswith("notes.jpg") else "corrupt_image"
            assert row["error_code"] == code and row["error_message"]
            assert row["face"] is None and row["group"] is None
            continue
        answer = post(api_client, Path(path).read_bytes(), filename=Path(path).name)
        assert answer.status_code == 200
        expected = face_rows(path, answer.get_json())
        assert len(found) == len(expected) >= 1
        for ours, theirs in zip(found, expected):
            # The same faces and groups; probabilities within the last rounded digit (the
            # workers run one inference thread each, the app all cores).
            assert ours["group"] == theirs["group"]
            assert ours["error_code"] is None
            for column in COLUMNS:
                if column.startswith("p_") or column in ("confidence", "age"):
                    assert ours[column] == pytest.approx(theirs[column], abs=2e-4), column
                else:
                    assert ours[column] == theirs[column], column
    counts = [len(found) for path, found in rows.items() if "group" in path]
    assert counts == [5, 5]  # the group of five, twice
    faceless = [found for path, found in rows.items() if "no-face" in path]
    assert faceless and all(f[0]["face_found"] is False and f[0]["x"] is None for f in faceless)


def test_json_lines_and_stdout_give_the_same_rows(two_workers, folder, model, tmp_path):
    out, _ = two_workers
    expected = list(read_rows(out))
    lines = tmp_path / "rows.jsonl"
    done = run(command(folder, "--out", lines, *model), env=ONE_THREAD)
    assert done.returncode == 1, done.stderr
    assert list(read_rows(lines)) == expected

    # One photo, no --out: CSV on stdout, exit status 0 when it was read.
    photo = folder / "07-group.jpg"
    done = run(command(photo, *model), env=ONE_THREAD)
    assert done.returncode == 0, done.stderr
    (tmp_path / "stdout.csv").write_text(done.stdout)
    assert list(read_rows(tmp_path / "stdout.csv")) == [
        row for row in expected if row["path"] == str(photo)
    ]
    assert "1 of 1 photos read, 5 faces found" in done.stderr


def wait_for_lines(path: Path, count: int, process: subprocess.Popen, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {count} lines (exit {process.poll()})")


@pytest.mark.slow
def test_resume_after_an_interruption_gives_the_same_file(folder, model, tmp_path):
    env = ONE_THREAD
    whole = tmp_path / "whole.csv"
    assert run(command(folder, "--out", whole, *model), env=env).returncode == 1

    out = tmp_path / "rows.csv"
    partial = tmp_path / "rows.csv.partial"
    log = (tmp_path / "stderr.txt").open("w")
    process = subprocess.Popen(
        command(folder, "--out", out, *model),
        cwd=PROJECT_ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        wait_for_lines(partial, 4, process, limit_s=240)
        process.send_signal(signal.SIGINT)  # Ctrl+C
        assert process.wait(60) == 130
    finally:
        process.kill()
        log.close()
    said = (tmp_path / "stderr.txt").read_text()
    assert "Interrupted" in said and "--resume" in said
    assert not out.exists()  # never half a file
    kept = partial.read_bytes().count(b"\n")
    assert 4 <= kept < 20

    # The same command without --resume refuses to throw the work away.
    refused = run(command(folder, "--out", out, *model), env=env)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    # A run killed while writing leaves a line cut short: it is done again.
    with partial.open("ab") as handle:
        handle.write(b'{"path": "' + str(folder).encode() + b"/09-no")
    resumed = run(command(folder, "--out", out, "--resume", *model), env=env)
    assert resumed.returncode == 1, resumed.stderr
    assert f"{kept}/20" in resumed.stderr  # the progress bar starts after the kept photos
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()

    # Resuming from the finished file reads nothing again, and writes the same file.
    again = run(command(folder, "--out", out, "--resume", *model), env=env)
    assert again.returncode == 1 and "20/20" in again.stderr
    assert out.read_bytes() == whole.read_bytes()


def test_usage_errors_exit_2_with_a_message(folder, model, tmp_path):
    cases = [
        (command(folder, "--resume", *model), "--resume needs --out"),
        (command(folder, "--out", tmp_path / "rows.xlsx", *model), "--out must end in"),
        (command(folder, "--workers", 0, *model), "--workers must be at least 1"),
        (command(tmp_path, *model), "No photos found"),
        (command(folder, "--out", tmp_path / "gone" / "rows.csv", *model), "No such file"),
        (command(folder, "--model", tmp_path / "export.pkl"), "no model"),
    ]
    for args, message in cases:
        done = run(args)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr
        assert "Traceback" not in done.stderr
        assert done.stdout == ""


def test_pip_install_in_a_fresh_venv_provides_the_command(onnx_dir, folder, tmp_path):
    """The wheel ``pip install .`` builds, installed into a new virtual environment; its
    dependencies come from this one (a .pth file), so nothing is downloaded."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "requirements-render.txt", "requirements-batch.txt"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    shutil.copytree(PROJECT_ROOT / "agegroup", source / "agegroup")
    pip = [sys.executable, "-m", "pip"]
    wheels = tmp_path / "wheels"
    built = run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source])
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("agegroup-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    installed = run([*pip, "--python", python, "install", "--no-deps", wheel])
    assert installed.returncode == 0, installed.stderr
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    (Path(site.stdout.strip()) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import agegroup; print(agegroup.__file__)"], cwd=elsewhere)
    assert where.stdout.startswith(str(venv)), where
    # The installed copy finds the checkout's face detector weights through AGE_PROJECT_ROOT.
    photo = folder / "07-group.jpg"
    args = [venv / "bin" / "agegroup", "predict", photo, "--model", onnx_dir / "export.pkl"]
    done = run([str(a) for a in args], env={"AGE_PROJECT_ROOT": str(PROJECT_ROOT)}, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == ",".join(COLUMNS)
    assert len(done.stdout.splitlines()) == 1 + 5

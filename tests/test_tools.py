"""The tools' shared parts: the benchmark's photos and end-to-end run, the gunicorn launcher,
memory reading, and what they measure with."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from agegroup.config import PROJECT_ROOT, UTKFACE_DIR
from agegroup.training.data import image_dir_of
from testsupport.memory import memory_mb
from testsupport.server import procfile_command
from tools.bench import PHOTO_SIZE, compose_photo, percentile

HAS_UTKFACE = image_dir_of(UTKFACE_DIR).is_dir()


def test_composed_photo_pastes_every_face_side_by_side_on_a_bench_sized_jpeg() -> None:
    colours = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250)]
    faces = [Image.new("RGB", (200, 200), colour) for colour in colours]
    data = compose_photo(faces, np.random.default_rng(0))
    with Image.open(io.BytesIO(data)) as photo:
        assert photo.format == "JPEG" and photo.size == PHOTO_SIZE
        pixels = np.asarray(photo.convert("RGB"), dtype=np.int16)
    centres = []
    for colour in colours:
        ys, xs = np.nonzero(np.abs(pixels - colour).max(axis=2) < 40)
        assert len(xs) > 100 * 100, f"face {colour} not pasted at a readable size"
        centres.append(xs.mean())
    assert centres == sorted(centres)  # left to right, in the order given


def test_the_launcher_runs_the_procfile_command_on_loopback_with_this_python() -> None:
    command = procfile_command(8123)
    assert command[:3] == [sys.executable, "-m", "gunicorn"]
    assert "app:app" in command and "gunicorn.conf.py" in command
    assert "127.0.0.1:8123" in command and not any("0.0.0.0" in w for w in command)


def test_memory_of_a_process_tree_counts_the_children_and_their_peak() -> None:
    hold = (
        "b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
        "print('ready', flush=True); input()"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import subprocess, sys; subprocess.run([sys.executable, '-c', {hold!r}])",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout.readline().strip() == "ready"
        memory = memory_mb(parent.pid)
    finally:
        parent.communicate("\n", timeout=30)
    assert memory["processes"] == 2
    assert memory["rss_mb"] >= 150 and memory["peak_mb"] >= memory["rss_mb"]
    assert max(memory["per_process_peak_mb"]) >= 150


def test_percentiles_interpolate_between_samples() -> None:
    assert percentile([10, 20, 30, 40], 50) == 25
    assert percentile([10, 20, 30, 40], 95) == pytest.approx(38.5)


@pytest.mark.skipif(not HAS_UTKFACE, reason="UTKFace is not beside the checkout")
def test_bench_runs_end_to_end_without_errors(onnx_dir, tmp_path) -> None:
    from tools.bench import main as bench

    out = tmp_path / "bench.json"
    argv = ["--model", str(onnx_dir / "export.pkl"), "--requests", "2", "--total", "6"]
    argv += ["--throughput-requests", "1", "--variants", "2", "--forward-repeats", "1"]
    assert bench(argv + ["--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["errors"] == 0 and result["predictions"] >= 6
    assert result["memory_after"]["processes"] >= 2  # gunicorn's master and its worker


@pytest.mark.skipif(not HAS_UTKFACE, reason="UTKFace is not beside the checkout")
def test_bench_stages_time_each_step_of_a_request(onnx_dir, tmp_path) -> None:
    from tools.bench import main as bench

    out = tmp_path / "stages.json"
    argv = ["--stages", "--model", str(onnx_dir / "export.pkl"), "--variants", "2"]
    assert bench(argv + ["--out", str(out)]) == 0
    for kind, steps in json.loads(out.read_text())["stages_cpu_ms"].items():
        levels = [v for k, v in steps.items() if k.startswith("search level")]
        assert len(levels) >= 2, kind  # the pyramid of a 1280 x 800 photo
        parts = sum(levels) + steps.get("second looks", 0) + steps["dlib landmarks"]
        assert steps["detect (all of it)"] >= parts - 0.3  # (each rounded to 0.1 ms)
        whole = steps["decode"] + steps["detect (all of it)"] + steps["crop"] + steps["model"]
        assert steps["request (all of it)"] >= whole - 0.3
        assert min(steps["decode"], steps["model"], steps["crop"]) > 0
        assert steps["MTCNN, all of it"] > 0  # the default detector's own steps, reported by it


def test_the_suite_cpu_plugin_counts_each_tests_own_and_childrens_cpu(tmp_path) -> None:
    busy = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    (tmp_path / "test_work.py").write_text(
        f"import subprocess, sys, time\nBUSY = {busy!r}\n"
        "def test_busy():\n    exec(BUSY)\n"
        "def test_child():\n    subprocess.run([sys.executable, '-c', BUSY], check=True)\n"
        "def test_idle():\n    time.sleep(0.2)\n"
    )
    report = tmp_path / "cpu.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "testsupport.suite_cpu",
            "-p",
            "no:cacheprovider",
        ]
        + [
            "--cpu-report",
            str(report),
            "-c",
            "/dev/null",
            "--rootdir",
            str(tmp_path),
            str(tmp_path),
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {row["test"].split("::")[1]: row for row in json.loads(report.read_text())["heaviest"]}
    assert rows["test_busy"]["self_s"] >= 0.25 and rows["test_busy"]["children_s"] < 0.1
    assert rows["test_child"]["children_s"] >= 0.25
    assert rows["test_idle"]["self_s"] + rows["test_idle"]["children_s"] < 0.1
    assert rows["test_idle"]["wall_s"] >= 0.2

"""``agegroup predict --ray local``: Ray Data on a local Ray of 2 CPUs (``ray.init(num_cpus=2)``)
reads the files, runs the pipeline in 2 actors and gives the command's rows, here as Parquet.

Ray is an optional extra (``requirements-batch.txt``): the test skips without it, and fails
instead when ``REQUIRE_RAY=1`` (as ``.ci/run`` sets), so CI cannot pass without running it.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from agegroup.rows import read_rows
from testsupport.batch import photo_folder, predict_command, run_command

ONE_THREAD = {"AGE_TORCH_THREADS": "1"}


@pytest.fixture(scope="module", autouse=True)
def ray_installed() -> None:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("REQUIRE_RAY") == "1":
            pytest.fail("REQUIRE_RAY=1 but Ray is not installed", pytrace=False)
        pytest.skip("Ray is not installed (pip install -r requirements-batch.txt)")


@pytest.mark.slow
def test_ray_rows_equal_the_commands(onnx_dir: Path, tmp_path: Path) -> None:
    files = photo_folder(tmp_path / "photos", 8)
    missing = tmp_path / "photos" / "gone.jpg"  # named but absent: its row says so
    inputs = [files[0].parent, missing]
    model = ["--runtime", "onnx", "--model", onnx_dir / "export.pkl"]

    local = tmp_path / "local.csv"
    done = run_command(predict_command(*inputs, "--out", local, "--workers", 2, *model), ONE_THREAD)
    assert done.returncode == 1, done.stderr
    on_ray = tmp_path / "ray.parquet"
    args = predict_command(*inputs, "--out", on_ray, "--ray", "local", "--workers", 2, *model)
    done = run_command(args)
    assert done.returncode == 1, done.stderr
    assert "8 of 11 photos read" in done.stderr
    assert "corrupt_image 1, unreadable_file 1, unsupported_type 1" in done.stderr

    expected = list(read_rows(local))
    assert len(expected) > 11  # the group of five adds rows
    assert list(read_rows(on_ray)) == expected
    assert [row["error_code"] for row in expected if row["path"] == str(missing)] == [
        "unreadable_file"
    ]

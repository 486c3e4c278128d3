"""The layout holds: the runtime package stays light and process-free, tests and tools share
``testsupport`` without path tricks, and the README's configuration table and layout stay true."""

from __future__ import annotations

import re
import subprocess
import sys

from agegroup.config import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_every_environment_variable_the_server_reads_is_in_the_configuration_table() -> None:
    sources = [*PROJECT_ROOT.glob("agegroup/**/*.py"), PROJECT_ROOT / "app.py"]
    sources.append(PROJECT_ROOT / "gunicorn.conf.py")
    read = set()
    for path in sources:
        text = path.read_text()
        read |= set(re.findall(r"""environ\.get\(\s*["']([A-Z_]+)["']""", text))
        read |= set(re.findall(r"""_env_(?:float|word)\(\s*["']([A-Z_]+)["']""", text))
    table = _section("Configuration")
    assert {"AGE_MODEL_PATH", "GUNICORN_REQUEST_DEADLINE", "LOG_LEVEL", "HOST"} <= read
    assert sorted(name for name in read if f"`{name}`" not in table) == []


def test_the_layout_names_every_module_and_folder() -> None:
    layout = _section("Layout")
    for package in ("agegroup", "agegroup/training", "tools", "testsupport"):
        assert f"{package}/" in layout
        for module in (PROJECT_ROOT / package).glob("*.py"):
            if module.stem != "__init__":
                assert re.search(rf"\b{module.stem}\b", layout), f"{package}/{module.name}"
    for folder in ("recipes", "model", "tests", "templates", "static", "docs"):
        assert f"{folder}/" in layout
    for recipe in (PROJECT_ROOT / "recipes").glob("*.sh"):
        assert recipe.name in layout


def test_importing_the_runtime_package_loads_no_flask() -> None:
    script = (
        "import agegroup, agegroup.buckets, agegroup.config, sys; print('flask' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    assert done.stdout.strip() == "False", done.stderr


def test_no_runtime_module_starts_processes_or_reads_proc() -> None:
    for module in (PROJECT_ROOT / "agegroup").glob("*.py"):
        text = module.read_text()
        assert not re.search(r"\bsubprocess\b|\bPopen\b|/proc/|os\.fork", text), module.name


def test_no_test_or_tool_edits_sys_path_or_imports_conftest() -> None:
    folders = ("tests", "tools", "testsupport")
    for path in (p for folder in folders for p in (PROJECT_ROOT / folder).glob("*.py")):
        text = path.read_text()
        if path.name != "test_layout.py":
            assert "sys.path" not in text and "PYTHONPATH" not in text, path
        assert not re.search(r"^\s*(from|import) conftest\b", text, re.M), path

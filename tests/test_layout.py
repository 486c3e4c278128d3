"""The layout holds: the runtime package stays light and process-free, tests and tools share
``testsupport`` without path tricks, the README's configuration table and layout stay true, and
every link to the docs, from the docs or from the code, reaches a file and a heading."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
            if not module.stem.startswith("__"):
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


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text()
    return {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def _in_the_tree(suffixes: tuple[str, ...]) -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    paths = (PROJECT_ROOT / name for name in listed.split("\0") if name.endswith(suffixes))
    return [path for path in paths if path.is_file()]


def _broken(target: Path, anchor: str, where: str) -> list[str]:
    if not target.exists():
        return [f"{where}: no file {target.relative_to(PROJECT_ROOT)}"]
    if anchor and target.suffix == ".md" and anchor not in _anchors(target):
        return [f"{where}: no heading #{anchor} in {target.relative_to(PROJECT_ROOT)}"]
    return []


def test_every_link_between_the_docs_points_to_a_file_and_a_heading() -> None:
    broken = []
    for page in _in_the_tree((".md",)):
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", link):  # https:, mailto:
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            broken += _broken(target, anchor, f"{page.relative_to(PROJECT_ROOT)} -> {link}")
    assert broken == [], "\n".join(broken)


def test_every_docs_section_the_code_names_exists() -> None:
    broken = []
    sources = _in_the_tree((".py", ".sh", ".yaml", ".html", ".js", ".toml", ".txt"))
    for source in sources:
        for path, anchor in re.findall(r"\b(docs/[\w-]+\.md)(?:#([\w-]+))?", source.read_text()):
            where = f"{source.relative_to(PROJECT_ROOT)} -> {path}" + (
                f"#{anchor}" if anchor else ""
            )
            broken += _broken(PROJECT_ROOT / path, anchor, where)
    assert broken == [], "\n".join(broken)

"""The README stays true: its configuration table and its layout name what the code has."""

from __future__ import annotations

import re

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

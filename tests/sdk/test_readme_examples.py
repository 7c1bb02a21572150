"""The README's SDK examples run as written, against a real server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
DEFAULT_URL = "http://127.0.0.1:8420"


def sdk_examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Python SDK", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_sdk_examples() -> None:
    assert len(sdk_examples()) >= 3


@pytest.mark.parametrize("index", range(len(sdk_examples())))
def test_readme_example_runs(index: int, server, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    source = sdk_examples()[index].replace(DEFAULT_URL, server.url)
    exec(compile(source, f"README.md example {index + 1}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert printed.strip(), "each example prints what it shows"
    assert "Traceback" not in printed

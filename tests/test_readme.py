"""The README opens with the two set-up commands, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_readme_opens_with_demo_and_test_commands():
    commands = _readme_commands()
    assert "tools.demo" in commands[0]
    assert "pytest" in commands[1]
    for command in commands[:2]:
        assert command.count("\n") == 0, "each set-up command is one line"
        assert command.startswith("python3 -m venv")


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci_lines

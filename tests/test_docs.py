"""The README walks an operator through a deployment using only what the repository holds."""

from __future__ import annotations

import re
from pathlib import Path

from mcnotify.config import SCHEMA

ROOT = Path(__file__).resolve().parent.parent


def test_readme_relies_only_on_files_in_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "../" not in readme and "/work/" not in readme
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), target
    assert "](docs/marketing-cloud.md)" in readme
    mc = (ROOT / "docs" / "marketing-cloud.md").read_text()
    for needle in ("v2/token", "messaging/v1/email/messages/", "Service.asmx", "109110", "UNCONFIRMED", "429"):
        assert needle in mc, needle


def test_readme_reference_covers_every_section_key_and_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for section, keys in SCHEMA.items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `[{section}]` |")), None)
        assert row is not None, section
        for key in keys:
            assert f"`{key}`" in row, f"{section}.{key}"
    for command in ("invalid", "sandbox", "doctor", "alert", "config check"):
        assert f"| `{command}" in readme, command


def test_readme_install_steps_are_complete() -> None:
    readme = " ".join((ROOT / "README.md").read_text().split())  # wrapping does not matter
    for step in (
        "useradd --system",
        "systemctl daemon-reload",
        "-m 0600",
        "systemd-run --pipe",
        "runuser -u mcnotify --",
        "OnSuccess=` needs systemd ≥ 249",
        "exit 78",
    ):
        assert step in readme, step

"""docs/configuration.md documents every setting: a setting added to config.py without its line in the
reference fails here (operators read the reference, not the code)."""

from __future__ import annotations

import re
from pathlib import Path

from dicomd.config import SETTINGS

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _table_rows() -> dict[str, str]:
    """The reference's table rows that start with a setting's name in backquotes, by that name."""
    rows: dict[str, str] = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        found = re.match(r"\|\s*`([a-z_]+)`\s*\|", line)
        if found:
            rows[found.group(1)] = line
    return rows


def test_every_setting_has_a_row_with_its_environment_variable() -> None:
    rows = _table_rows()
    missing = [name for name in SETTINGS if name not in rows]
    assert not missing, f"settings without a row in docs/configuration.md: {missing}"
    without_env = [name for name, spec in SETTINGS.items() if f"`{spec.env}`" not in rows[name]]
    assert not without_env, f"rows that do not name their DICOMD_* variable: {without_env}"


def test_the_reference_names_no_setting_that_does_not_exist() -> None:
    # a renamed or removed setting must not linger in the reference
    documented = set(_table_rows())
    unknown = sorted(documented - set(SETTINGS))
    assert not unknown, f"docs/configuration.md documents settings config.py does not have: {unknown}"

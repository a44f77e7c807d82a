"""Session hooks: start building the MONAI Label environment early when its tests are selected."""

from __future__ import annotations

import pytest

from tests.integration import monailabel_build


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the MONAI Label environment's build in the background when a ``monailabel`` test will run."""
    if not session.config.option.collectonly and any(item.get_closest_marker("monailabel") for item in session.items):
        monailabel_build.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop a build still running when the session ends early (interrupted, ``-x``)."""
    monailabel_build.stop()

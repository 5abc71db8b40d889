"""System binaries needed by some tests (promtool, Alertmanager)."""

from __future__ import annotations

import os
import shutil


def require_binary(name: str) -> str:
    """Path of a system binary; fail in CI (where .ci/run installs it), skip locally."""
    import pytest

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (.ci/run installs it from Debian's packages)")
        pytest.skip(f"{name} not installed (apt-get install prometheus prometheus-alertmanager)")
    return path

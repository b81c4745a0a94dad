"""Fixtures and markers of the editor-client tests."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "vscode: drives VS Code (code-server + Chromium); needs the install of scripts/vscode-e2e.sh",
    )

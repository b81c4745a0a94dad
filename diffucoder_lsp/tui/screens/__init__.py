"""The demo's screens: the main demo screen and the settings dialog."""

from .demo import DemoScreen
from .settings import SettingsScreen

__all__ = ["DemoScreen", "SettingsScreen"]

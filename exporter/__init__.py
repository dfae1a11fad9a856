"""Copilot Proxy Insight: a mitmproxy addon that observes GitHub Copilot traffic."""

from __future__ import annotations

__version__ = "0.1.0"

"""The report stage: one self-contained HTML file summarising a cohort run (see :mod:`multimodal.report.html`)."""

from __future__ import annotations

from multimodal.report.html import build_report, render_report

__all__ = ["build_report", "render_report"]

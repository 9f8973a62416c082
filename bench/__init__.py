"""Benchmarks for signalgate: ``python bench/run.py`` (see bench/README.md). Not part of the test suite."""

from __future__ import annotations

__all__: list[str] = []

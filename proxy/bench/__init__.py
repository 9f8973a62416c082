"""``signalgate bench``: the load-test suite (local scenarios, a running deployment, the budget guard).

Ships in the wheel; needs the bench extra (``pip install 'signalgate[bench]'``) for its GeoIP file
and plots, and wrk for its best figures. Entry point: ``proxy.bench.command.main``.
"""

from __future__ import annotations

__all__: list[str] = []

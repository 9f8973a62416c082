"""The commented example configurations, shipped inside the wheel as ``proxy.examples``.

``signalgate config example`` prints ``signalgate.toml``; pyproject.toml maps this directory.
"""

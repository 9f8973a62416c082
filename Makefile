# Shortcuts; the README's two commands are the contract, these only repeat them.
.PHONY: install test lint demo bench smoke

install:
	python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'

test: install
	.venv/bin/pytest

lint:
	.venv/bin/ruff check proxy tests bench && .venv/bin/ruff format --check proxy tests bench

demo:
	python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/signalgate demo

bench:
	.venv/bin/signalgate bench

smoke:
	bash scripts/smoke-wheel.sh

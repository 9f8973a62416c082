"""The numbered migrations, shipped inside the wheel as ``proxy.sql`` (pyproject.toml maps it).

Read with ``importlib.resources`` by ``proxy.db.migrate``; only the ``NNN_name.sql`` files are migrations.
"""

"""Settings loading: defaults, file and environment, and an error naming the setting for every bad value."""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import fields, replace
from pathlib import Path

import pytest

from proxy.config.settings import Listen, RouteSetting, Settings, load, redact_dsn
from proxy.core.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
TOKEN = "tok-0123456789abcdef-SECRET"
PASSWORD = "hunter2-Pa55word"


def write(tmp_path: Path, text: str, name: str = "signalgate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- defaults


def test_embedded_defaults() -> None:
    s = Settings()
    assert s.listen == Listen("127.0.0.1", 8080)
    assert s.admin_listen == Listen("127.0.0.1", 8081)
    assert (s.upstream, s.routes, s.database_url, s.geoip_db, s.admin_token) == (None, (), None, None, None)
    assert s.data_dir == Path(".signalgate")
    assert s.trusted_proxies == ()
    assert s.expose_reasons is False
    assert s.workers == 1
    assert s.key_header == "X-API-Key"
    assert (s.connect_timeout, s.read_timeout) == (5.0, 60.0)
    assert (s.tls_cert, s.tls_key, s.upstream_ca, s.upstream_tls_verify) == (None, None, None, True)
    assert (s.max_header_size, s.cache_size, s.negative_cache_size) == (8190, 10000, 10000)
    assert (s.max_stale, s.admin_max_body, s.log_level) == (10.0, 65536, "info")
    assert (s.database_timeout, s.admin_database_timeout) == (2.0, 5.0)


def test_load_without_file_or_environment_gives_defaults_with_cpu_count_workers() -> None:
    loaded = load(None, {"PATH": "/usr/bin", "HOME": "/root"})
    assert loaded.workers == min(os.cpu_count() or 1, 256)
    assert replace(loaded, workers=1) == Settings()


# --- environment


@pytest.fixture
def existing_file(tmp_path: Path) -> Path:
    path = tmp_path / "exists.pem"
    path.write_text("x")
    return path


ENV_OVERRIDES = [
    ("SIGNALGATE_LISTEN", "0.0.0.0:9000", "listen", Listen("0.0.0.0", 9000)),
    ("SIGNALGATE_LISTEN", "[::]:8443", "listen", Listen("::", 8443)),
    ("SIGNALGATE_LISTEN", "localhost:0", "listen", Listen("localhost", 0)),
    ("SIGNALGATE_ADMIN_LISTEN", "[::1]:9001", "admin_listen", Listen("::1", 9001)),
    ("SIGNALGATE_UPSTREAM", "https://api.internal:8443/v2/", "upstream", "https://api.internal:8443/v2"),
    ("SIGNALGATE_UPSTREAM", "http://[::1]:9000", "upstream", "http://[::1]:9000"),
    ("SIGNALGATE_UPSTREAM", "", "upstream", None),
    ("SIGNALGATE_DATABASE_URL", "postgresql://sg@db:5432/sg", "database_url", "postgresql://sg@db:5432/sg"),
    ("SIGNALGATE_DATABASE_URL", "postgres:///sg?host=/run/pg", "database_url", "postgres:///sg?host=/run/pg"),
    ("SIGNALGATE_DATABASE_URL", "", "database_url", None),
    ("SIGNALGATE_DATA_DIR", "/var/lib/signalgate", "data_dir", Path("/var/lib/signalgate")),
    ("SIGNALGATE_ADMIN_TOKEN", TOKEN, "admin_token", TOKEN),
    (
        "SIGNALGATE_TRUSTED_PROXIES",
        "10.0.0.0/8, 192.168.1.1,2001:db8::/32,",
        "trusted_proxies",
        (
            ipaddress.ip_network("10.0.0.0/8"),
            ipaddress.ip_network("192.168.1.1/32"),
            ipaddress.ip_network("2001:db8::/32"),
        ),
    ),
    ("SIGNALGATE_TRUSTED_PROXIES", "", "trusted_proxies", ()),
    ("SIGNALGATE_EXPOSE_REASONS", "true", "expose_reasons", True),
    ("SIGNALGATE_EXPOSE_REASONS", "YES", "expose_reasons", True),
    ("SIGNALGATE_EXPOSE_REASONS", "on", "expose_reasons", True),
    ("SIGNALGATE_EXPOSE_REASONS", "1", "expose_reasons", True),
    ("SIGNALGATE_UPSTREAM_TLS_VERIFY", "off", "upstream_tls_verify", False),
    ("SIGNALGATE_UPSTREAM_TLS_VERIFY", "0", "upstream_tls_verify", False),
    ("SIGNALGATE_UPSTREAM_TLS_VERIFY", "No", "upstream_tls_verify", False),
    ("SIGNALGATE_WORKERS", "7", "workers", 7),
    ("SIGNALGATE_WORKERS", "256", "workers", 256),
    ("SIGNALGATE_KEY_HEADER", "X-Signalgate-Key", "key_header", "X-Signalgate-Key"),
    ("SIGNALGATE_CONNECT_TIMEOUT", "0.25", "connect_timeout", 0.25),
    ("SIGNALGATE_READ_TIMEOUT", "120", "read_timeout", 120.0),
    ("SIGNALGATE_UPSTREAM_MAX_CONNECTIONS", "64", "upstream_max_connections", 64),
    ("SIGNALGATE_UPSTREAM_IDLE_TIMEOUT", "2.5", "upstream_idle_timeout", 2.5),
    ("SIGNALGATE_MAX_HEADER_SIZE", "16384", "max_header_size", 16384),
    ("SIGNALGATE_CACHE_SIZE", "1", "cache_size", 1),
    ("SIGNALGATE_NEGATIVE_CACHE_SIZE", "0", "negative_cache_size", 0),
    ("SIGNALGATE_MAX_STALE", "2.5", "max_stale", 2.5),
    ("SIGNALGATE_DATABASE_TIMEOUT", "0.5", "database_timeout", 0.5),
    ("SIGNALGATE_ADMIN_DATABASE_TIMEOUT", "3", "admin_database_timeout", 3.0),
    ("SIGNALGATE_ADMIN_MAX_BODY", "1048576", "admin_max_body", 1048576),
    ("SIGNALGATE_LOG_LEVEL", "DEBUG", "log_level", "debug"),
    ("SIGNALGATE_LOG_LEVEL", "warning", "log_level", "warning"),
    ("SIGNALGATE_DECISION_LINE_LEVEL", "OFF", "decision_line_level", "off"),
    ("SIGNALGATE_DECISION_LINE_SAMPLE", "0.1", "decision_line_sample", 0.1),
    ("SIGNALGATE_DECISION_LOG", "false", "decision_log", False),
    ("SIGNALGATE_DECISION_LOG_SAMPLE", "0", "decision_log_sample", 0.0),
    ("SIGNALGATE_DECISION_LOG_RETENTION_DAYS", "7", "decision_log_retention_days", 7),
    ("SIGNALGATE_DECISION_SPOOL_MAX_BYTES", "1048576", "decision_spool_max_bytes", 1048576),
    ("SIGNALGATE_DECISION_FLUSH_INTERVAL", "0.1", "decision_flush_interval", 0.1),
]


@pytest.mark.parametrize(("var", "raw", "attr", "expected"), ENV_OVERRIDES)
def test_environment_override(var: str, raw: str, attr: str, expected: object) -> None:
    settings = load(None, {var: raw})
    assert getattr(settings, attr) == expected


@pytest.mark.parametrize("var", ["SIGNALGATE_GEOIP_DB", "SIGNALGATE_UPSTREAM_CA"])
def test_environment_file_paths(var: str, existing_file: Path) -> None:
    settings = load(None, {var: str(existing_file)})
    assert getattr(settings, var.removeprefix("SIGNALGATE_").lower()) == existing_file


def test_environment_tls_pair(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("c")
    key.write_text("k")
    settings = load(None, {"SIGNALGATE_TLS_CERT": str(cert), "SIGNALGATE_TLS_KEY": str(key)})
    assert (settings.tls_cert, settings.tls_key) == (cert, key)


# --- bad values

ENV_ERRORS = [
    ("SIGNALGATE_LISTEN", "127.0.0.1:99999", "port must be 1-65535"),
    ("SIGNALGATE_LISTEN", "127.0.0.1", "expected host:port"),
    ("SIGNALGATE_LISTEN", ":8080", "expected host:port"),
    ("SIGNALGATE_LISTEN", "127.0.0.1:http", "port must be 1-65535"),
    ("SIGNALGATE_LISTEN", "::1:8080", "IPv6 hosts need brackets"),
    ("SIGNALGATE_LISTEN", "[127.0.0.1]:80", "expected [IPv6]:port"),
    ("SIGNALGATE_LISTEN", "bad_host!:80", "not an IP address or host name"),
    ("SIGNALGATE_ADMIN_LISTEN", "127.0.0.1:-1", "port must be 1-65535"),
    ("SIGNALGATE_LISTEN", "127.0.0.1:8\N{SUPERSCRIPT TWO}", "port must be 1-65535"),  # isdigit() says yes
    ("SIGNALGATE_UPSTREAM", "ftp://files.example.com", "http:// or https://"),
    ("SIGNALGATE_UPSTREAM", "api.example.com:8000", "http:// or https://"),
    ("SIGNALGATE_UPSTREAM", "http://", "no host"),
    ("SIGNALGATE_UPSTREAM", "http://api:99999", "not a valid URL"),
    ("SIGNALGATE_UPSTREAM", "http://api/x?y=1", "query or fragment"),
    ("SIGNALGATE_UPSTREAM", "http://api/x#top", "query or fragment"),
    ("SIGNALGATE_UPSTREAM", "http://api/a b", "whitespace"),
    ("SIGNALGATE_DATABASE_URL", "mysql://db/sg", "postgresql:// URL"),
    ("SIGNALGATE_DATABASE_URL", "postgresql://db:port/sg", "not a valid URL"),
    ("SIGNALGATE_DATA_DIR", "", "must not be empty"),
    ("SIGNALGATE_DATA_DIR", "~sg-no-such-user/state", "cannot expand '~sg-no-such-user': no such user"),
    ("SIGNALGATE_GEOIP_DB", "~sg-no-such-user/c.mmdb", "cannot expand '~sg-no-such-user': no such user"),
    ("SIGNALGATE_GEOIP_DB", "/nonexistent/GeoLite2-Country.mmdb", "file not found"),
    ("SIGNALGATE_UPSTREAM_CA", "/nonexistent/ca.pem", "file not found"),
    ("SIGNALGATE_TLS_CERT", "/nonexistent/cert.pem", "file not found"),
    ("SIGNALGATE_TLS_KEY", "/nonexistent/key.pem", "file not found"),
    ("SIGNALGATE_TRUSTED_PROXIES", "10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8?"),
    ("SIGNALGATE_TRUSTED_PROXIES", "2001:db8::1/32", "did you mean 2001:db8::/32?"),
    ("SIGNALGATE_TRUSTED_PROXIES", "localhost", "not an IP network"),
    ("SIGNALGATE_EXPOSE_REASONS", "maybe", "expected true/false"),
    ("SIGNALGATE_UPSTREAM_TLS_VERIFY", "", "expected true/false"),
    ("SIGNALGATE_WORKERS", "0", "must be 1-256"),
    ("SIGNALGATE_WORKERS", "257", "must be 1-256"),
    ("SIGNALGATE_WORKERS", "four", "expected an integer"),
    ("SIGNALGATE_WORKERS", "2.5", "expected an integer"),
    ("SIGNALGATE_KEY_HEADER", "X API Key", "not a valid HTTP header name"),
    ("SIGNALGATE_KEY_HEADER", "X-Key:", "not a valid HTTP header name"),
    ("SIGNALGATE_KEY_HEADER", "Content-Length", "cannot carry the key"),
    ("SIGNALGATE_CONNECT_TIMEOUT", "0", "positive number of seconds"),
    ("SIGNALGATE_CONNECT_TIMEOUT", "-1", "positive number of seconds"),
    ("SIGNALGATE_READ_TIMEOUT", "inf", "positive number of seconds"),
    ("SIGNALGATE_READ_TIMEOUT", "soon", "expected a number of seconds"),
    ("SIGNALGATE_UPSTREAM_MAX_CONNECTIONS", "0", "must be 1-100000"),
    ("SIGNALGATE_UPSTREAM_IDLE_TIMEOUT", "0", "positive number of seconds"),
    ("SIGNALGATE_MAX_HEADER_SIZE", "1023", "must be 1024-65536"),
    ("SIGNALGATE_MAX_HEADER_SIZE", "65537", "must be 1024-65536"),
    ("SIGNALGATE_CACHE_SIZE", "0", "must be at least 1"),
    ("SIGNALGATE_NEGATIVE_CACHE_SIZE", "-1", "must be at least 0"),
    ("SIGNALGATE_MAX_STALE", "nan", "positive number of seconds"),
    ("SIGNALGATE_ADMIN_MAX_BODY", "100", "must be 1024-16777216"),
    ("SIGNALGATE_LOG_LEVEL", "verbose", "must be one of debug, info, warning, error"),
    ("SIGNALGATE_ROUTES", "/api=http://x", "can only be set in the config file"),
    ("SIGNALGATE_DECISION_LINE_LEVEL", "warning", "must be one of info, debug, off"),
    ("SIGNALGATE_DECISION_LOG_SAMPLE", "1.5", "must be a number from 0 to 1"),
    ("SIGNALGATE_DECISION_LINE_SAMPLE", "half", "expected a number from 0 to 1"),
    ("SIGNALGATE_DECISION_LOG_SAMPLE", "nan", "must be a number from 0 to 1"),
    ("SIGNALGATE_DECISION_LOG_RETENTION_DAYS", "0", "must be 1-3650"),
    ("SIGNALGATE_DECISION_SPOOL_MAX_BYTES", "1000", "must be at least 1048576"),
    ("SIGNALGATE_DECISION_FLUSH_INTERVAL", "0", "positive number of seconds"),
]


@pytest.mark.parametrize(("var", "raw", "reason"), ENV_ERRORS)
def test_environment_error_names_setting_and_value(var: str, raw: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, {var: raw})
    error = caught.value
    assert error.setting == var
    assert reason in error.reason
    message = str(error)
    assert message.startswith(f"{var}=")
    assert "\n" not in message
    # The whole value, or for lists the offending item, is quoted.
    assert repr(error.value) in message
    assert str(error.value) in raw


def test_error_message_shape() -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, {"SIGNALGATE_LISTEN": "127.0.0.1:99999"})
    assert str(caught.value).startswith("SIGNALGATE_LISTEN='127.0.0.1:99999': port must be 1-65535")


FILE_ERRORS = [
    ("listen = 8080\n", "listen", 8080, "expected a string"),
    ("workers = true\n", "workers", True, "expected an integer"),
    ('expose_reasons = "sometimes"\n', "expose_reasons", "sometimes", "expected true/false"),
    ('trusted_proxies = ["10.0.0.0/8", "10.1.1.1/16"]\n', "trusted_proxies", "10.1.1.1/16", "10.1.0.0/16"),
    ("trusted_proxies = [10]\n", "trusted_proxies", 10, "expected a CIDR string"),
    ('upstream = "htp://x"\n', "upstream", "htp://x", "http:// or https://"),
    ('listn = "127.0.0.1:1"\n', "listn", "127.0.0.1:1", "unknown setting; did you mean 'listen'?"),
    ('colour = "blue"\n', "colour", "blue", "unknown setting"),
    ('[server]\nlisten = "x"\n', "server", {"listen": "x"}, "unknown setting"),
    ('routes = "/api"\n', "routes", "/api", "expected [[routes]] tables"),
    ('[[routes]]\nprefix = "api"\nupstream = "http://a"\n', "routes[0].prefix", "api", 'must start with "/"'),
    ('[[routes]]\nprefix = "/a?b"\nupstream = "http://a"\n', "routes[0].prefix", "/a?b", "no spaces"),
    ('[[routes]]\nprefix = "/a/../b"\nupstream = "http://a"\n', "routes[0].prefix", "/a/../b", '".."'),
    ('[[routes]]\nprefix = "/a"\nupstream = "tcp://a"\n', "routes[0].upstream", "tcp://a", "http://"),
    ('[[routes]]\nprefix = "/a"\n', "routes[0].upstream", None, "route has no upstream"),
    ('[[routes]]\nupstream = "http://a"\n', "routes[0].prefix", None, "route has no prefix"),
    (
        '[[routes]]\nprefix = "/a"\nupstream = "http://a"\nhost = "bad host"\n',
        "routes[0].host",
        "bad host",
        "expected a host name",
    ),
    (
        '[[routes]]\nprefix = "/a"\nupstream = "http://a"\npreserve_host = "perhaps"\n',
        "routes[0].preserve_host",
        "perhaps",
        "expected true/false",
    ),
    (
        '[[routes]]\nprefix = "/a"\nupstream = "http://a"\nweight = 3\n',
        "routes[0].weight",
        3,
        "unknown route key",
    ),
    (
        '[[routes]]\nprefix = "/a"\nupstream = "http://a"\n[[routes]]\nprefix = "/b"\nupstream = "http://b"\n'
        '[[routes]]\nprefix = "/a/"\nupstream = "http://c"\n',
        "routes[2].prefix",
        "/a/",
        "duplicates routes[0]",
    ),
]


@pytest.mark.parametrize(("text", "key", "value", "reason"), FILE_ERRORS)
def test_file_error_names_key_file_and_value(
    tmp_path: Path, text: str, key: str, value: object, reason: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert caught.value.setting == f"{key} (in {path})"
    assert caught.value.value == value
    assert reason in caught.value.reason
    assert "\n" not in str(caught.value)


def test_tls_needs_both_files(tmp_path: Path, existing_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, {"SIGNALGATE_TLS_CERT": str(existing_file)})
    assert caught.value.setting == "SIGNALGATE_TLS_CERT"
    assert "tls_key must be set too" in caught.value.reason

    path = write(tmp_path, f'tls_key = "{existing_file}"\n')
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert caught.value.setting == f"tls_key (in {path})"
    assert "tls_cert must be set too" in caught.value.reason


def test_path_that_is_a_directory_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load(None, {"SIGNALGATE_GEOIP_DB": str(tmp_path)})


def test_data_dir_must_be_a_directory_or_creatable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        load(None, {"SIGNALGATE_DATA_DIR": str(tmp_path / "file")})
    with pytest.raises(ConfigError, match=f"{tmp_path / 'file'} is not a directory"):
        load(None, {"SIGNALGATE_DATA_DIR": str(tmp_path / "file" / "state")})
    assert (
        load(None, {"SIGNALGATE_DATA_DIR": str(tmp_path / "new" / "state")}).data_dir
        == tmp_path / "new" / "state"
    )


@pytest.mark.parametrize(
    ("listen", "admin_listen", "overlap"),
    [
        ("0.0.0.0:8080", "127.0.0.1:8080", True),
        ("127.0.0.1:8080", "0.0.0.0:8080", True),
        ("[::]:8080", "[::1]:8080", True),
        ("[::]:8080", "127.0.0.1:8080", False),  # IPv6 sockets are bound v6-only
        ("0.0.0.0:8080", "127.0.0.1:8081", False),
        ("127.0.0.2:8080", "127.0.0.1:8080", False),
        ("localhost:8080", "127.0.0.1:8080", False),  # a name: only binding tells
    ],
)
def test_listen_and_admin_listen_must_not_overlap(listen: str, admin_listen: str, overlap: bool) -> None:
    env = {"SIGNALGATE_LISTEN": listen, "SIGNALGATE_ADMIN_LISTEN": admin_listen}
    if not overlap:
        load(None, env)
        return
    with pytest.raises(ConfigError) as caught:
        load(None, env)
    assert caught.value.setting == "SIGNALGATE_ADMIN_LISTEN" and "overlaps listen" in caught.value.reason


def test_listen_and_admin_listen_must_differ() -> None:
    with pytest.raises(ConfigError) as caught:
        load(None, {"SIGNALGATE_ADMIN_LISTEN": "127.0.0.1:8080"})
    assert caught.value.setting == "SIGNALGATE_ADMIN_LISTEN"
    # Two "pick a free port" listeners do not collide.
    both_free = load(None, {"SIGNALGATE_LISTEN": "127.0.0.1:0", "SIGNALGATE_ADMIN_LISTEN": "127.0.0.1:0"})
    assert both_free.listen.port == both_free.admin_listen.port == 0


# --- file + environment


def test_file_values_then_environment_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "0.0.0.0:9000"\n'
        'upstream = "http://file-upstream:80"\n'
        "workers = 3\n"
        'trusted_proxies = "10.0.0.0/8"\n'
        "expose_reasons = true\n"
        "read_timeout = 15\n"
        "[[routes]]\n"
        'prefix = "/api"\n'
        'upstream = "http://api:8000/"\n'
        'host = "API.Example.com"\n'
        "preserve_host = false\n",
    )
    env = {"SIGNALGATE_UPSTREAM": "http://env-upstream:80", "SIGNALGATE_WORKERS": "5"}
    settings = load(path, env)
    assert settings.listen == Listen("0.0.0.0", 9000)  # file
    assert settings.upstream == "http://env-upstream:80"  # environment wins
    assert settings.workers == 5  # environment wins
    assert settings.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert settings.expose_reasons is True
    assert settings.read_timeout == 15.0
    assert settings.routes == (RouteSetting("/api", "http://api:8000", "api.example.com", False),)
    assert settings.cache_size == 10000  # untouched default


def test_empty_environment_value_unsets_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'upstream = "http://file-upstream"\n')
    assert load(path, {}).upstream == "http://file-upstream"
    assert load(path, {"SIGNALGATE_UPSTREAM": ""}).upstream is None


def test_signalgate_config_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    from_env = write(tmp_path, 'log_level = "error"\n', "env.toml")
    explicit = write(tmp_path, 'log_level = "warning"\n', "explicit.toml")
    assert load(None, {"SIGNALGATE_CONFIG": str(from_env)}).log_level == "error"
    assert load(explicit, {"SIGNALGATE_CONFIG": str(from_env)}).log_level == "warning"
    assert (
        load(None, {"SIGNALGATE_CONFIG": str(from_env), "SIGNALGATE_LOG_LEVEL": "debug"}).log_level == "debug"
    )


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load(missing, {})
    assert (caught.value.setting, caught.value.value) == ("config file", str(missing))
    assert "not found" in caught.value.reason
    with pytest.raises(ConfigError) as caught:
        load(None, {"SIGNALGATE_CONFIG": str(missing)})
    assert caught.value.setting == "SIGNALGATE_CONFIG"


def test_invalid_toml_is_an_error_with_position(tmp_path: Path) -> None:
    path = write(tmp_path, 'listen = "127.0.0.1:8080"\nworkers = = 2\n')
    with pytest.raises(ConfigError) as caught:
        load(path, {})
    assert "invalid TOML" in caught.value.reason
    assert "line 2" in caught.value.reason
    assert "\n" not in str(caught.value)


def test_unknown_environment_variable_is_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="signalgate.config"):
        settings = load(None, {"SIGNALGATE_ADMN_TOKEN": TOKEN, "SIGNALGATE_LISTEN": "127.0.0.1:1"})
    assert settings.listen.port == 1
    assert settings.admin_token is None
    assert "SIGNALGATE_ADMN_TOKEN" in caplog.text
    assert TOKEN not in caplog.text


# --- secrets


def test_admin_token_never_shown() -> None:
    settings = load(None, {"SIGNALGATE_ADMIN_TOKEN": TOKEN})
    assert settings.admin_token == TOKEN
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert "admin_token='***'" in repr(settings)

    for bad in ("short-" + PASSWORD[:4], TOKEN + " with space"):
        with pytest.raises(ConfigError) as caught:
            load(None, {"SIGNALGATE_ADMIN_TOKEN": bad})
        assert bad not in str(caught.value)
        assert caught.value.value == "***"
        assert str(caught.value).startswith("SIGNALGATE_ADMIN_TOKEN='***': ")


def test_admin_token_from_file_is_masked_in_errors(tmp_path: Path) -> None:
    misspelt = write(tmp_path, f'admin_tokn = "{TOKEN}"\n', "misspelt.toml")
    with pytest.raises(ConfigError) as caught:
        load(misspelt, {})
    assert "did you mean 'admin_token'?" in str(caught.value)
    assert TOKEN not in str(caught.value)
    bad = write(tmp_path, 'admin_token = "tooshort"\n', "bad.toml")
    with pytest.raises(ConfigError) as caught:
        load(bad, {})
    assert "tooshort" not in str(caught.value)


def test_database_password_never_shown() -> None:
    dsn = f"postgresql://signalgate:{PASSWORD}@db.internal:5432/signalgate"
    settings = load(None, {"SIGNALGATE_DATABASE_URL": dsn})
    assert settings.database_url == dsn
    assert PASSWORD not in repr(settings)
    assert "postgresql://signalgate:***@db.internal:5432/signalgate" in repr(settings)

    for bad in (
        f"mysql://signalgate:{PASSWORD}@db/signalgate",
        f"postgresql://signalgate:{PASSWORD}@db:notaport/signalgate",
        f"host=db user=signalgate password={PASSWORD}",
    ):
        with pytest.raises(ConfigError) as caught:
            load(None, {"SIGNALGATE_DATABASE_URL": bad})
        assert PASSWORD not in str(caught.value)
        assert PASSWORD not in repr(caught.value.value)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:p@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss/w@rd@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (
            "postgresql://h/db?user=u&password=p&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("host=h password='a b' user=u", "host=h password=*** user=u"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


# --- shipped examples


def example_configs() -> list[Path]:
    return sorted(CONFIG_DIR.glob("*.toml"))


def test_examples_are_shipped() -> None:
    names = {p.name for p in example_configs()}
    assert {"signalgate.toml", "multi-upstream.toml"} <= names


@pytest.mark.parametrize("path", example_configs(), ids=lambda p: p.name)
def test_every_example_config_loads_as_is(path: Path) -> None:
    settings = load(path, {})
    assert isinstance(settings, Settings)


def test_full_example_documents_every_setting_with_its_default() -> None:
    path = CONFIG_DIR / "signalgate.toml"
    text = path.read_text()
    for f in fields(Settings):
        assert f"{f.name} = " in text or f"[[{f.name}]]" in text, f.name
        if f.name != "routes":
            assert f"SIGNALGATE_{f.name.upper()}" in text, f.name
    loaded = load(path, {})
    assert loaded == load(None, {})  # the example spells out the defaults


def test_multi_upstream_example_has_routes_and_trusted_proxies() -> None:
    settings = load(CONFIG_DIR / "multi-upstream.toml", {})
    assert len(settings.routes) >= 2
    assert any(r.host is not None for r in settings.routes)
    assert any(not r.preserve_host for r in settings.routes)
    assert settings.trusted_proxies
    assert settings.geoip_db is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("admin.internal", False),  # a name: reachable from elsewhere as far as the setting tells
        ("::ffff:127.0.0.1", False),  # IPv4-mapped: an IPv6 socket, reachable as IPv6
    ],
)
def test_a_listen_address_knows_whether_only_this_host_can_reach_it(host: str, loopback: bool) -> None:
    assert Listen(host, 8081).loopback is loopback

"""A bad setting stops `lockgate-server` before it starts anything, with one line on stderr that
names the variable (or file) and what is wrong: no traceback, no half-started server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lockgate_server.settings import ENV_PREFIX, SettingsError, describe_settings, load_settings
from lockgate_server.storage.embedded import free_port

CLI_TIMEOUT_S = 30.0
"""A refusal takes about a second (an interpreter starting); a server that started instead is killed."""


def run_server(tmp_path: Path, *arguments: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m lockgate_server ARGUMENTS` with these LOCKGATE_* variables and no others.

    Unless a test sets it, the store is one nobody listens on, waited for 0 ms: a server that
    wrongly accepts the settings exits at once (or stands by) instead of starting a Valkey.
    """
    base = {key: value for key, value in os.environ.items() if not key.startswith(ENV_PREFIX)}
    base.update(
        {
            f"{ENV_PREFIX}DATA_DIR": str(tmp_path / "data"),
            f"{ENV_PREFIX}REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            f"{ENV_PREFIX}STORE_WAIT_MS": "0",
            f"{ENV_PREFIX}GRPC_PORT": "0",
        }
    )
    base.update(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "lockgate_server", *arguments],
        env=base,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so a server that did start goes down with everything it started
    )
    try:
        stdout, stderr = process.communicate(timeout=CLI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"lockgate-server was still running after {CLI_TIMEOUT_S} s:\n{stderr}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def refused(tmp_path: Path, variable: str, *arguments: str, **env: str) -> str:
    """Run with `env`; check the server refused with one line naming `variable`; return that line."""
    result = run_server(tmp_path, *arguments, **env)
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0], result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        pytest.param("PORT", "abc", "expected an integer, got 'abc'", id="port-not-a-number"),
        pytest.param("PORT", "99999", "<= 65535", id="port-too-high"),
        pytest.param("PORT", "0", ">= 1", id="port-zero"),
        pytest.param("GRPC_PORT", "70000", "<= 65535", id="grpc-port-too-high"),
        pytest.param("REQUIRE_FSYNC_ALWAYS", "maybe", "expected true or false", id="bool-not-a-word-we-know"),
        pytest.param("API_KEYS", "[bad", "not valid JSON", id="api-keys-bad-json"),
        pytest.param("LOG_LEVEL", "verbose", "expected one of debug, info", id="log-level-unknown"),
        pytest.param("REDIS_URL", "localhost:6379", "redis://, rediss://, unix://", id="redis-url-no-scheme"),
        pytest.param("REDIS_URL", "redis://app:secret@127.0.0.1:abc/0", "Port", id="redis-url-bad-port"),
    ],
)
def test_a_bad_variable_is_refused_in_one_line_that_names_it(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    line = refused(tmp_path, f"{ENV_PREFIX}{variable}", **{f"{ENV_PREFIX}{variable}": value})
    assert said in line
    assert "secret" not in line  # a store URL's password never reaches the output


def test_a_missing_config_file_is_refused_in_one_line(tmp_path: Path) -> None:
    line = refused(tmp_path, f"{ENV_PREFIX}CONFIG", **{f"{ENV_PREFIX}CONFIG": str(tmp_path / "nonexistent.toml")})
    assert "nonexistent.toml" in line


def test_a_config_file_that_is_not_toml_is_refused_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text("port = \n")
    line = refused(tmp_path, f"{ENV_PREFIX}CONFIG", **{f"{ENV_PREFIX}CONFIG": str(config)})
    assert str(config) in line and "TOML" in line


def test_a_bad_value_in_the_config_file_names_the_file_and_key(tmp_path: Path) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text("port = 99999\n")
    line = refused(tmp_path, str(config), **{f"{ENV_PREFIX}CONFIG": str(config)})
    assert ": port: " in line


def test_a_port_option_of_zero_is_refused_not_ignored(tmp_path: Path) -> None:
    assert ">= 1" in refused(tmp_path, f"{ENV_PREFIX}PORT", "--port", "0")


@pytest.mark.parametrize(
    ("value", "meant"),
    [("yes", True), ("ON", True), ("True", True), ("1", True), ("no", False), ("Off", False), ("0", False)],
)
def test_a_boolean_variable_takes_the_usual_words(value: str, meant: bool) -> None:
    settings = load_settings(environ={f"{ENV_PREFIX}REQUIRE_FSYNC_ALWAYS": value})
    assert settings.require_fsync_always is meant


@pytest.mark.parametrize("port", [1, 8420, 65535])
def test_ports_in_range_are_taken(port: int) -> None:
    assert load_settings(environ={f"{ENV_PREFIX}PORT": str(port)}).port == port


def test_the_store_url_schemes_the_connections_take_are_accepted() -> None:
    for url in ("redis://10.0.0.5:6379/0", "rediss://app:pw@store:6380/0?ssl_cert_reqs=none", "unix:///run/v.sock"):
        assert load_settings(environ={f"{ENV_PREFIX}REDIS_URL": url}).redis_url == url


def test_a_string_setting_that_looks_like_json_is_taken_as_it_is() -> None:
    assert load_settings(environ={f"{ENV_PREFIX}HOST": "[::1]"}).host == "[::1]"


def test_an_unknown_key_in_the_config_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "lockgate.toml"
    config.write_text("prot = 8421\n")
    with pytest.raises(SettingsError, match="unknown setting 'prot'"):
        load_settings(environ={f"{ENV_PREFIX}CONFIG": str(config)})


def test_a_store_that_does_not_answer_ends_the_start_without_a_traceback(tmp_path: Path) -> None:
    result = run_server(tmp_path)  # its store: a port nobody listens on, waited for 0 ms
    assert result.returncode != 0, result.stderr
    assert "did not answer within 0 ms" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_port_taken_on_ipv4_only_does_not_refuse_an_ipv6_host(tmp_path: Path) -> None:
    """asyncio binds :: IPv6-only: a port another process holds on 0.0.0.0 is free there."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        key = json.dumps([{"sha256": "0" * 64, "namespaces": ["*"], "rights": ["read"]}])
        result = run_server(
            tmp_path, **{f"{ENV_PREFIX}HOST": "::", f"{ENV_PREFIX}PORT": port, f"{ENV_PREFIX}API_KEYS": key}
        )
    # Past the port check, it ends at its store (nobody listens there): the check let it through.
    assert "did not answer within 0 ms" in result.stderr and "cannot listen" not in result.stderr, result.stderr


@pytest.mark.parametrize("variable", ["PORT", "GRPC_PORT"])
def test_a_port_in_use_ends_the_start_in_one_line(tmp_path: Path, variable: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = refused(
            tmp_path, f"{ENV_PREFIX}{variable}", **{f"{ENV_PREFIX}HOST": "127.0.0.1", f"{ENV_PREFIX}{variable}": port}
        )
    assert f"127.0.0.1:{port}" in line and "in use" in line


def test_a_data_folder_that_cannot_be_made_ends_the_start_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    result = run_server(
        tmp_path, **{f"{ENV_PREFIX}DATA_DIR": str(tmp_path / "a-file" / "data"), f"{ENV_PREFIX}REDIS_URL": ""}
    )
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "cannot start the embedded Valkey" in result.stderr and "a-file" in result.stderr, result.stderr


def test_the_help_shows_the_defaults_of_list_settings() -> None:
    lines = {line.split()[0]: line for line in describe_settings().splitlines() if line.startswith(f"  {ENV_PREFIX}")}
    assert "(required)" not in describe_settings()
    assert lines[f"{ENV_PREFIX}API_KEYS"].endswith("default []")
    assert lines[f"{ENV_PREFIX}POLICY_FILES"].endswith("default []")


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        ("http://fd00::7:8420", "http://[fd00::7]:8420"),  # the Helm chart's http://$(POD_IP):8420 on IPv6
        ("http://::1:8420", "http://[::1]:8420"),
        ("http://::ffff:10.1.2.3:8420", "http://[::ffff:10.1.2.3]:8420"),
        ("http://[fd00::7]:8420", "http://[fd00::7]:8420"),
        ("http://10.0.0.7:8420/lockgate", "http://10.0.0.7:8420/lockgate"),
    ],
)
def test_an_advertised_ipv6_address_is_put_in_brackets(given: str, taken: str) -> None:
    assert load_settings(environ={f"{ENV_PREFIX}ADVERTISE_URL": given}).advertise_url == taken


@pytest.mark.parametrize("url", ["10.0.0.7:8420", "http://node:http", "http://"])
def test_an_advertise_url_others_cannot_reach_is_refused(url: str) -> None:
    with pytest.raises(SettingsError, match=f"{ENV_PREFIX}ADVERTISE_URL"):
        load_settings(environ={f"{ENV_PREFIX}ADVERTISE_URL": url})

"""Configuration: layering, validation, and the one-line answers the CLI gives."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fanoutd.config import MIB, ConfigError, load

NO_ENV: dict[str, str] = {}


def test_defaults_are_loopback():
    c = load({}, NO_ENV)
    assert c.collector == ("tcp://127.0.0.1:5560",)
    assert c.publish == ("tcp://127.0.0.1:5561",)
    assert c.push == ("tcp://127.0.0.1:5562",)
    assert c.metrics == ("127.0.0.1", 9560)
    assert c.max_message_size == MIB and c.collector_topics == ("",) and c.push_strip_topic


def test_precedence_defaults_file_env_flags(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text('max_frames = 3\nmax_message_size = "64KiB"\nlog_level = "warning"\n'
                 'publish = ["tcp://127.0.0.1:7001", "ipc:///run/fanoutd/pub"]\n')
    env = {"FANOUTD_MAX_FRAMES": "5", "FANOUTD_LOG_LEVEL": "error"}
    c = load({"max_frames": "7"}, env, str(f))
    assert c.max_frames == 7  # flag beats env beats file
    assert c.log_level == "error"  # env beats file
    assert c.max_message_size == 64 * 1024  # file beats default
    assert c.publish == ("tcp://127.0.0.1:7001", "ipc:///run/fanoutd/pub")
    assert c.config_file == str(f)


def test_env_lists_are_comma_separated_and_config_file_from_env(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text("max_frames = 9\n")
    c = load({}, {"FANOUTD_PUSH": "tcp://127.0.0.1:1,tcp://127.0.0.1:2", "FANOUTD_CONFIG": str(f)})
    assert c.push == ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    assert c.max_frames == 9


def test_empty_output_disables_it_but_not_all():
    assert load({"push": [""]}, NO_ENV).push == ()
    assert load({"push": [""], "publish": [""]}, NO_ENV).stamped == ("tcp://127.0.0.1:5565",)
    with pytest.raises(ConfigError, match="nothing would leave"):
        load({"push": [""], "publish": [""], "stamped": [""]}, NO_ENV)


@pytest.mark.parametrize("flags, message", [
    ({"collector": ["tcp://127.0.0.1"]}, "malformed endpoint"),
    ({"collector": ["udp://1.2.3.4:5"]}, "malformed endpoint"),
    ({"push": ["tcp://127.0.0.1:70000"]}, "port out of range"),
    ({"publish": ["tcp://127.0.0.1:5560"]}, "also used by collector"),
    ({"max_message_size": "-5"}, "must be between 256"),
    ({"max_message_size": "100"}, "must be between 256"),
    ({"max_message_size": "lots"}, "expected a size"),
    ({"max_frames": "0"}, "must be between 1 and 256"),
    ({"metrics": "localhost"}, "expected HOST:PORT"),
    ({"metrics": "example.com:80"}, "bad host"),
    ({"log_level": "loud"}, "expected debug"),
    ({"drain_timeout": "-1"}, "between 0 and 3600"),
    ({"push_strip_topic": "maybe"}, "expected true or false"),
    ({"heartbeat_interval": "10", "heartbeat_timeout": "0"}, "heartbeat_timeout must be more than 0"),
    ({"upstream": ["tcp://127.0.0.1:5563"], "collector_topics": ["x" * 8183]},
     "collector_topics: a prefix of 8183 bytes is longer than the 8182 an upstream relay accepts"),
])
def test_bad_values_are_named(flags, message):
    with pytest.raises(ConfigError, match=message):
        load(flags, NO_ENV)


def test_the_longest_prefix_an_upstream_accepts_is_allowed_and_without_upstream_any():
    assert load({"upstream": ["tcp://127.0.0.1:5563"], "collector_topics": ["x" * 8182]}, NO_ENV)
    assert load({"collector_topics": ["x" * 9000]}, NO_ENV)  # only a relay link carries them


def test_bad_env_names_its_source():
    with pytest.raises(ConfigError, match="environment: max_frames"):
        load({}, {"FANOUTD_MAX_FRAMES": "x"})


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="config file: cannot read .*missing.toml: not found"):
        load({}, NO_ENV, str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("max_frames = [\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load({}, NO_ENV, str(bad))
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("max_framez = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_framez'"):
        load({}, NO_ENV, str(unknown))


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fanoutd", *args], capture_output=True, text=True,
                          timeout=30, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args, needle", [
    (["--collector", "nonsense"], "malformed endpoint 'nonsense'"),
    (["--max-message-size", "-1"], "max_message_size: must be between"),
    (["--config", "/nonexistent/fanoutd.toml"], "config file: cannot read /nonexistent/fanoutd.toml: not found"),
    (["--log-level", "chatty"], "log_level"),
])
def test_cli_config_errors_are_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("fanoutd: configuration error:")
    assert r.stdout == ""


def test_cli_unknown_key_in_file_exit_2(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text("colector = 'tcp://127.0.0.1:1'\n")
    r = run_cli("--config", str(f), "--check-config")
    assert r.returncode == 2 and "unknown setting 'colector'" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_check_config_prints_the_result(tmp_path):
    f = tmp_path / "f.toml"
    f.write_text("max_frames = 4\n")
    r = run_cli("--config", str(f), "--check-config", "--metrics", "127.0.0.1:9999")
    assert r.returncode == 0, r.stderr
    assert '"max_frames": 4' in r.stdout and '"metrics": "127.0.0.1:9999"' in r.stdout


def test_cli_unknown_flag_is_an_error():
    r = run_cli("--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


def test_shipped_example_config_is_valid():
    from pathlib import Path
    example = Path(__file__).resolve().parent.parent / "systemd" / "fanoutd.toml"
    c = load({}, NO_ENV, str(example))
    assert c.collector


def test_config_caps_are_the_native_loops():
    """max_frames and metrics_topics are bounded by what the C loop has room for, defined there once."""
    from fanoutd.dataplane import limits
    assert load({"max_frames": str(limits.FRAMES_CAP)}, NO_ENV).max_frames == limits.FRAMES_CAP
    with pytest.raises(ConfigError, match="max_frames"):
        load({"max_frames": str(limits.FRAMES_CAP + 1)}, NO_ENV)
    topics = [f"t{i}" for i in range(limits.TOPICS_CAP + 1)]
    assert len(load({"metrics_topics": topics[:-1]}, NO_ENV).metrics_topics) == limits.TOPICS_CAP
    with pytest.raises(ConfigError, match="at most"):
        load({"metrics_topics": topics}, NO_ENV)


def test_unknown_environment_variables_are_reported_not_ignored():
    with pytest.raises(ConfigError, match=r"^environment: unknown variable FANOUTD_UPSTREAM_CURVE$"):
        load({}, {"FANOUTD_UPSTREAM_CURVE": "1"})
    with pytest.raises(ConfigError, match=r"unknown variable FANOUTD_MAX_FRAME \(did you mean FANOUTD_MAX_FRAMES\?\)"):
        load({}, {"FANOUTD_MAX_FRAME": "3"})
    assert load({}, {"FANOUTD_MAX_FRAMES": "3", "OTHER": "x"}).max_frames == 3

"""The generated reference files match the code, the shipped config is every default, Config is the settings table."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fanoutd import metrics, reference
from fanoutd.config import INHERITED, SETTINGS, Config, as_dict, load
from fanoutd.values import TYPES

from conftest import ROOT, free_port

NO_ENV: dict[str, str] = {}
SHIPPED = ROOT / "systemd" / "fanoutd.toml"


@pytest.mark.parametrize("path", sorted(reference.FILES))
def test_checked_in_reference_file_is_what_the_code_generates(path):
    assert (ROOT / path).exists(), f"{path} is missing: run `make reference`"
    assert (ROOT / path).read_text() == reference.FILES[path](), f"{path} drifted from the code: run `make reference`"


def test_check_mode_names_a_drifted_file(tmp_path):
    for path, make in reference.FILES.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(make())
    assert reference.drifted(tmp_path) == []
    (tmp_path / "docs" / "metrics.md").write_text("stale\n")
    assert reference.drifted(tmp_path) == ["docs/metrics.md"]


def test_shipped_config_names_every_setting_commented_out_at_its_default(tmp_path):
    commented = dict(re.findall(r"^#(\w+) = (.*)$", SHIPPED.read_text(), re.MULTILINE))
    assert list(commented) == [s.name for s in SETTINGS]
    defaults = load({}, NO_ENV)
    assert dataclasses.replace(load({}, NO_ENV, str(SHIPPED)), config_file=None) == defaults
    # Uncommented, each line sets its setting to the very default it documents.
    uncommented = tmp_path / "fanoutd.toml"
    uncommented.write_text("".join(f"{name} = {value}\n" for name, value in commented.items()))
    assert dataclasses.replace(load({}, NO_ENV, str(uncommented)), config_file=None) == defaults


def test_check_config_of_the_shipped_file_prints_the_defaults():
    r = subprocess.run([sys.executable, "-m", "fanoutd", "--config", str(SHIPPED), "--check-config"],
                       capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    expected = json.loads(json.dumps(as_dict(load({}, NO_ENV))))
    assert json.loads(r.stdout) == expected


def test_config_is_the_settings_table():
    fields = dataclasses.fields(Config)
    assert [f.name for f in fields] == [s.name for s in SETTINGS] + ["config_file"]
    assert all(f.type == TYPES[s.kind] for f, s in zip(fields, SETTINGS))
    config = load({}, NO_ENV)
    changed = dataclasses.replace(config, max_frames=3)
    assert changed.max_frames == 3 and config.changed(changed) == ["max_frames"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_frames = 3  # type: ignore[misc]
    assert set(INHERITED) <= {s.name for s in SETTINGS} and set(INHERITED.values()) <= {s.name for s in SETTINGS}


def test_metrics_sources_are_given_by_name():
    with pytest.raises(TypeError):
        metrics.Sources(dict, dict, dict, dict, dict, dict, lambda: load({}, NO_ENV))  # type: ignore[misc]


def _documented_metrics() -> dict[str, set[str]]:
    """Metric name -> label names, from docs/metrics.md's table (exposed names, e.g. with _total)."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    out: dict[str, set[str]] = {}
    for name, labels in re.findall(r"^\| `(fanoutd_[a-z_]+)` \| \w+ \| ([^|]*) \|", text, re.MULTILINE):
        # "`output`: `push`, `publish`; `reason`: `hwm`" -> {"output", "reason"}; "-" -> no labels
        out[name] = set(re.findall(r"(?:^|;\s*)`([a-z_]+)`", labels.strip()))
    return out


def test_metrics_doc_names_what_a_daemon_with_every_socket_serves(start_daemon):
    """Every fanoutd_* family a live node with every socket exposes is in docs/metrics.md, labels included,
    and the doc names nothing the node does not expose; the relay's hellos are counted, not received."""
    relay_port = free_port()
    d = start_daemon("--relay", f"tcp://127.0.0.1:{relay_port}", "--upstream", f"tcp://localhost:{relay_port}",
                     "--ingress", "tcp://127.0.0.1:*", "--metrics-topics", "orders")
    _, text = d.get("/metrics")
    live: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("fanoutd_") and not sample.name.endswith("_created"):
                live.setdefault(sample.name, set()).update(sample.labels)
    live.setdefault("fanoutd_topic_received_messages_total", {"topic"})  # appears with the first message
    documented = _documented_metrics()
    assert set(live) == set(documented), (sorted(set(live) - set(documented)), sorted(set(documented) - set(live)))
    for name, labels in live.items():
        assert labels == documented[name], (name, labels, documented[name])
    # The node is ready once its upstream link (its own relay) greeted it: that hello is counted.
    deadline = time.monotonic() + 10
    while d.value("fanoutd_upstream_hellos_total") < 1:
        assert time.monotonic() < deadline, "no relay hello counted within 10 s:\n" + d.log()
        time.sleep(0.05)

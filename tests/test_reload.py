"""Reload planning as a pure function: no files, no sockets, just (running, new) -> what applies."""

from __future__ import annotations

from fanoutd.config import load
from fanoutd.keys import Keys
from fanoutd.reload import plan

NO_ENV: dict[str, str] = {}
KEY_A, KEY_B, KEY_C = (bytes([65 + i]) * 40 for i in range(3))


def keys(clients=None, secret=None) -> Keys:
    return Keys(secret, {"collector": clients, "publish": None, "push": None})


def test_live_settings_apply_and_the_rest_waits_for_a_restart():
    current = load({}, NO_ENV)
    new = load({"max_frames": "8", "publish_hwm": "5", "log_level": "debug"}, NO_ENV)
    p = plan(current, keys(), new, keys())
    assert p.live == ("max_frames", "log_level")
    assert p.restart == ("publish_hwm",)
    assert p.config.max_frames == 8 and p.config.log_level == "debug"
    assert p.config.publish_hwm == current.publish_hwm  # not applied: the sockets are bound with the old one
    assert p.applied() == "max_frames=8; log_level='debug'"


def test_key_set_changes_are_named_by_file():
    config = load({"curve_secret_key": "s", "collector_curve": "1", "collector_clients": "d"}, NO_ENV)
    before = keys({"a.key": KEY_A, "b.key": KEY_B})
    after = keys({"a.key": KEY_C, "c.key": KEY_C})
    p = plan(config, before, config, after)
    assert p.live == () and p.restart == ()
    assert p.key_changes == ("collector_clients +c.key -b.key ~a.key",)
    assert p.policies["collector"].clients == frozenset({KEY_C})
    assert p.keys.clients["collector"] == {"a.key": KEY_C, "c.key": KEY_C}


def test_nothing_changed_says_so_and_a_new_secret_key_needs_a_restart():
    config = load({}, NO_ENV)
    assert plan(config, keys(), config, keys()).applied() == "nothing changed"
    p = plan(config, keys(secret=KEY_A), config, keys(secret=KEY_B))
    assert p.restart == ("curve_secret_key (the file's key)",)
    assert p.keys.secret == KEY_A  # the sockets keep the key they were bound with


def test_policies_cover_exactly_the_configured_sockets_and_borrow_by_the_role_table():
    config = load({"relay": ["tcp://127.0.0.1:7000"], "stamped": ["tcp://127.0.0.1:7001"],
                   "publish_allow": ["10.0.0.0/8"]}, NO_ENV)
    p = plan(config, keys(), config, keys())
    assert set(p.policies) == {"collector", "publish", "push", "relay", "stamped", "repair"}
    assert p.policies["stamped"] is p.policies["publish"] and p.policies["repair"] is p.policies["publish"]
    # The relay has a policy of its own, which keeps publish's settings where none of its own are given.
    assert p.policies["relay"] is not p.policies["publish"]
    assert [str(n) for n in p.policies["relay"].allow] == ["10.0.0.0/8"]
    own = load({"relay": ["tcp://127.0.0.1:7000"], "publish_allow": ["10.0.0.0/8"], "relay_allow": ["192.0.2.0/24"]},
               NO_ENV)
    assert [str(n) for n in plan(own, keys(), own, keys()).policies["relay"].allow] == ["192.0.2.0/24"]


def test_a_relay_protected_by_publish_curve_stays_protected_after_the_upgrade():
    config = load({"relay": ["tcp://127.0.0.1:7000"], "publish_curve": "true", "curve_secret_key": "/k"}, NO_ENV)
    assert config.relay_curve is True
    opened = load({"relay": ["tcp://127.0.0.1:7000"], "publish_curve": "true", "relay_curve": "false",
                   "curve_secret_key": "/k"}, NO_ENV)
    assert opened.relay_curve is False  # only when asked for, explicitly

from __future__ import annotations

from pathlib import Path

import pytest

from vmlaunch.config.settings import load_config
from vmlaunch.errors import VmlaunchError


@pytest.fixture
def layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    system = tmp_path / "etc.yaml"
    user_home = tmp_path / "config"
    (user_home / "vmlaunch").mkdir(parents=True)
    monkeypatch.setenv("VMLAUNCH_SYSTEM_CONFIG", str(system))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(user_home))
    for name in ("VMLAUNCH_MEMORY", "VMLAUNCH_CPUS", "VMLAUNCH_ACCEL"):
        monkeypatch.delenv(name, raising=False)
    return system, user_home / "vmlaunch" / "config.yaml"


def test_each_layer_overrides_the_one_below_and_says_so(
    layers: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    system, user = layers
    system.write_text("memory: 2048\ncpus: 2\naccel: kvm\nmax_cpus: 4\n")
    user.write_text("cpus: 3\naccel: tcg\n")
    monkeypatch.setenv("VMLAUNCH_ACCEL", "auto")
    config = load_config({"memory": None, "boot_timeout": 5})
    assert (config["memory"], config.origin("memory")) == (2048, str(system))
    assert (config["cpus"], config.origin("cpus")) == (3, str(user))
    assert (config["accel"], config.origin("accel")) == ("auto", "environment")
    assert (config["boot_timeout"], config.origin("boot_timeout")) == (5.0, "command line")
    assert (config["max_cpus"], config.origin("max_cpus")) == (4, str(system))
    assert config.origin("runs_dir") == "default"


def test_users_cannot_set_the_admins_settings(layers: tuple[Path, Path]) -> None:
    _system, user = layers
    user.write_text("catalog_dir: /home/me/my-catalog\n")
    with pytest.raises(VmlaunchError, match="administrator's setting"):
        load_config()


def test_unknown_settings_and_bad_values_are_named(
    layers: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _system, user = layers
    user.write_text("memroy: 10\n")
    with pytest.raises(VmlaunchError, match="unknown setting 'memroy'"):
        load_config()
    user.write_text("")
    monkeypatch.setenv("VMLAUNCH_MEMORY", "lots")
    with pytest.raises(VmlaunchError, match="memory in environment must be int"):
        load_config()


def test_broken_yaml_names_the_file(layers: tuple[Path, Path]) -> None:
    _system, user = layers
    user.write_text("memory: [\n")
    with pytest.raises(VmlaunchError, match=str(user)):
        load_config()

"""KVM probing against fake sysfs trees laid out like the kernel's /sys/module/<name>/."""

from __future__ import annotations

from pathlib import Path

from vmlaunch.host.accel import probe_kvm


def test_paravirtualized_nested_kvm_is_unusable(tmp_path: Path) -> None:
    (tmp_path / "sys/module/kvm_pvm/parameters").mkdir(parents=True)
    dev = tmp_path / "kvm"
    dev.write_text("")
    reason = probe_kvm(tmp_path / "sys", dev)
    assert reason is not None and "kvm_pvm" in reason


def test_missing_device_is_named(tmp_path: Path) -> None:
    (tmp_path / "sys/module/kvm_intel").mkdir(parents=True)
    reason = probe_kvm(tmp_path / "sys", tmp_path / "no-kvm")
    assert reason is not None and "does not exist" in reason


def test_an_openable_device_without_paravirt_module_is_usable(tmp_path: Path) -> None:
    (tmp_path / "sys/module/kvm_intel").mkdir(parents=True)
    dev = tmp_path / "kvm"
    dev.write_text("")
    assert probe_kvm(tmp_path / "sys", dev) is None

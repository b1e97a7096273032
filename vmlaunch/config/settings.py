"""Layered configuration: defaults < system file < user file < VMLAUNCH_* variables < options.

Every setting is declared once in SETTINGS, with its type, default and help; `vmlaunch config
show` prints each value with the layer it came from. Settings marked `admin` are read only from
the system file (the broker's policy); a user's layers cannot set them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vmlaunch.errors import VmlaunchError

SYSTEM_CONFIG = Path("/etc/vmlaunch/config.yaml")


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: Any
    help: str
    admin: bool = False


SETTINGS: tuple[Setting, ...] = (
    Setting("accel", str, "auto", "auto, kvm or tcg; auto uses KVM and fails if it is unusable"),
    Setting("memory", int, 1024, "guest memory in MiB"),
    Setting("cpus", int, 1, "guest vCPUs"),
    Setting("boot_timeout", float, 120.0, "seconds to wait for the guest to become ready"),
    Setting("broker_socket", str, "/run/vmlaunch/broker.sock", "the broker's unix socket"),
    Setting(
        "cache_dir",
        str,
        "~/.cache/vmlaunch",
        "the user's image cache (unpacked layers, root file systems); home directories on "
        "clusters have quotas: point it at scratch space",
    ),
    Setting("catalog_dir", str, "/etc/vmlaunch/catalog", "the admin's catalog", admin=True),
    Setting("store_dir", str, "/var/lib/vmlaunch/store", "the artifact store", admin=True),
    Setting("runs_dir", str, "/var/lib/vmlaunch/runs", "the broker's per-run state", admin=True),
    Setting(
        "rootfs_cache_dir",
        str,
        "/var/lib/vmlaunch/rootfs",
        "the broker's copies of users' root file systems, per user",
        admin=True,
    ),
    Setting("rootfs_cache_keep", int, 3, "root file systems kept per user", admin=True),
    Setting("max_memory", int, 16384, "per-run memory limit in MiB", admin=True),
    Setting("max_cpus", int, 8, "per-run vCPU limit", admin=True),
    Setting("max_runs", int, 4, "runs one user may have at once", admin=True),
    Setting("max_rootfs_mib", int, 65536, "largest container root file system, MiB", admin=True),
    Setting("allowed_accels", list, ["kvm", "tcg"], "accelerators users may ask for", admin=True),
)
BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True)
class Value:
    value: Any
    origin: str


class Config:
    """Resolved settings with their origins; read with config["name"]."""

    def __init__(self, values: Mapping[str, Value]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> Any:
        return self._values[name].value

    def path(self, name: str) -> Path:
        return Path(os.path.expanduser(str(self[name])))

    def origin(self, name: str) -> str:
        return self._values[name].origin

    def items(self) -> list[tuple[str, Value]]:
        return sorted(self._values.items())


def user_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "vmlaunch" / "config.yaml"


def system_config_path() -> Path:
    return Path(os.environ.get("VMLAUNCH_SYSTEM_CONFIG", str(SYSTEM_CONFIG)))


def load_config(options: Mapping[str, Any] | None = None, *, admin_only: bool = False) -> Config:
    """Resolve every setting through the layers; admin_only reads the system file alone."""
    values = {s.name: Value(s.default, "default") for s in SETTINGS}
    _apply(values, read_file(system_config_path()), str(system_config_path()), admin=True)
    if not admin_only:
        _apply(values, read_file(user_config_path()), str(user_config_path()), admin=False)
        env = {
            s.name: os.environ[f"VMLAUNCH_{s.name.upper()}"]
            for s in SETTINGS
            if f"VMLAUNCH_{s.name.upper()}" in os.environ
        }
        _apply(values, env, "environment", admin=False)
        given = {k: v for k, v in (options or {}).items() if v is not None}
        _apply(values, given, "command line", admin=False)
    return Config(values)


def read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise VmlaunchError(f"cannot read {path}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise VmlaunchError(f"{path} is not valid YAML: {e}", "fix the file") from e
    if not isinstance(data, dict):
        raise VmlaunchError(f"{path} must be a mapping of settings", "see `vmlaunch config show`")
    return data


def _apply(values: dict[str, Value], layer: Mapping[str, Any], origin: str, admin: bool) -> None:
    for name, raw in layer.items():
        setting = BY_NAME.get(name)
        if setting is None:
            raise VmlaunchError(
                f"unknown setting {name!r} in {origin}",
                f"known settings: {', '.join(sorted(BY_NAME))}",
            )
        if setting.admin and not admin:
            raise VmlaunchError(
                f"{name!r} in {origin} is the administrator's setting",
                f"only {system_config_path()} sets it",
            )
        values[name] = Value(_convert(setting, raw, origin), origin)


def _convert(setting: Setting, raw: Any, origin: str) -> Any:
    if setting.kind is list:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise VmlaunchError(f"{setting.name} in {origin} must be a list, not {raw!r}")
        return [str(i).strip() for i in items]
    try:
        return setting.kind(raw)
    except (TypeError, ValueError) as e:
        raise VmlaunchError(
            f"{setting.name} in {origin} must be {setting.kind.__name__}, not {raw!r}"
        ) from e

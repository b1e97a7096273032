"""The libvirt domain XML of one run, built from a frozen spec (guest-images/CONTRACT.md)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

CONTROL_PORT = "org.vmlaunch.control"
GUEST_DISK_SERIAL = "vml-guest"
ROOTFS_DISK_SERIAL = "vml-rootfs"
SEED_DISK_SERIAL = "vml-seed"


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


@dataclass(frozen=True)
class Disk:
    path: Path
    serial: str
    shared: bool
    """Read by many guests (store artifacts, cached root file systems): libvirt must not
    relabel them; they are readable by QEMU's user or group as they are."""


@dataclass(frozen=True)
class Share:
    """A host directory served by a virtiofsd the broker started, reached through socket."""

    tag: str
    readonly: bool
    socket: Path


@dataclass(frozen=True)
class DomainSpec:
    name: str
    uuid: str
    accel: Accel
    memory_mib: int
    vcpus: int
    kernel: Path
    initramfs: Path
    cmdline: str
    disks: tuple[Disk, ...]
    control_socket: Path
    console_log: Path
    shares: tuple[Share, ...] = field(default=())


def render_domain(spec: DomainSpec) -> str:
    """The domain XML for spec, indented, as libvirt's schema accepts it."""
    domain = ET.Element("domain", type="kvm" if spec.accel is Accel.KVM else "qemu")
    _text(domain, "name", spec.name)
    _text(domain, "uuid", spec.uuid)
    _text(domain, "memory", str(spec.memory_mib), unit="MiB")
    _text(domain, "vcpu", str(spec.vcpus))
    if spec.shares:
        backing = ET.SubElement(domain, "memoryBacking")
        ET.SubElement(backing, "source", type="memfd")
        ET.SubElement(backing, "access", mode="shared")
    _add_os(domain, spec)
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    if spec.accel is Accel.KVM:
        ET.SubElement(domain, "cpu", mode="host-passthrough", check="none", migratable="off")
    ET.SubElement(domain, "clock", offset="utc")
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _text(domain, event, "destroy")
    _add_devices(domain, spec)
    ET.indent(domain)
    return ET.tostring(domain, encoding="unicode") + "\n"


def _text(parent: ET.Element, tag: str, text: str, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    element.text = text
    return element


def _add_os(domain: ET.Element, spec: DomainSpec) -> None:
    os_ = ET.SubElement(domain, "os")
    _text(os_, "type", "hvm", arch="x86_64", machine="q35")
    _text(os_, "kernel", str(spec.kernel))
    _text(os_, "initrd", str(spec.initramfs))
    _text(os_, "cmdline", spec.cmdline)


def _add_devices(domain: ET.Element, spec: DomainSpec) -> None:
    devices = ET.SubElement(domain, "devices")
    for index, disk in enumerate(spec.disks):
        _add_disk(devices, disk, f"vd{chr(ord('a') + index)}")
    for share in spec.shares:
        _add_share(devices, share)
    _add_control_channel(devices, spec.control_socket)
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(spec.console_log))
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="file")
    ET.SubElement(console, "source", path=str(spec.console_log))
    ET.SubElement(console, "target", type="serial", port="0")
    rng = ET.SubElement(devices, "rng", model="virtio")
    _text(rng, "backend", "/dev/urandom", model="random")
    ET.SubElement(devices, "memballoon", model="none")


def _add_disk(devices: ET.Element, disk: Disk, target: str) -> None:
    element = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(element, "driver", name="qemu", type="raw")
    source = ET.SubElement(element, "source", file=str(disk.path))
    if disk.shared:
        ET.SubElement(source, "seclabel", model="dac", relabel="no")
    ET.SubElement(element, "target", dev=target, bus="virtio")
    ET.SubElement(element, "readonly")
    _text(element, "serial", disk.serial)


def _add_share(devices: ET.Element, share: Share) -> None:
    # Read-only is enforced by the broker's virtiofsd (a read-only bind mount), not here.
    element = ET.SubElement(devices, "filesystem", type="mount")
    ET.SubElement(element, "driver", type="virtiofs", queue="1024")
    ET.SubElement(element, "source", socket=str(share.socket))
    ET.SubElement(element, "target", dir=share.tag)


def _add_control_channel(devices: ET.Element, socket: Path) -> None:
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "source", mode="bind", path=str(socket))
    ET.SubElement(channel, "target", type="virtio", name=CONTROL_PORT)

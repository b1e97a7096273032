"""The broker's libvirt calls: the only module of vmlaunch that imports libvirt."""

from __future__ import annotations

import logging
from typing import Any

import libvirt

from vmlaunch.errors import HostError

log = logging.getLogger(__name__)

URI = "qemu:///system"
DOMAIN_PREFIX = "vmlaunch-"


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error on stderr by default; vmlaunch reports them itself."""


libvirt.registerErrorHandler(_quiet, None)


def open_connection() -> Any:
    try:
        return libvirt.open(URI)
    except libvirt.libvirtError as e:
        raise HostError(
            f"cannot connect to libvirt at {URI}: {e.get_error_message()}",
            "start libvirtd and virtlogd (see README.md)",
        ) from e


def start_transient(conn: Any, xml: str) -> Any:
    """Start a transient domain that libvirt destroys when conn closes."""
    log.debug("domain XML:\n%s", xml)
    try:
        return conn.createXML(xml, libvirt.VIR_DOMAIN_START_AUTODESTROY)
    except libvirt.libvirtError as e:
        raise HostError(f"libvirt refused to start the guest: {e.get_error_message()}") from e


def destroy(domain: Any) -> None:
    try:
        domain.destroy()
    except libvirt.libvirtError as e:
        if e.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            log.warning("destroying %s failed: %s", domain.name(), e.get_error_message())


def has_domain_caps(conn: Any, virttype: str) -> bool:
    try:
        conn.getDomainCapabilities(None, "x86_64", None, virttype)
    except libvirt.libvirtError:
        return False
    return True


def list_vmlaunch_domains(conn: Any) -> list[Any]:
    return [d for d in conn.listAllDomains() if d.name().startswith(DOMAIN_PREFIX)]

"""Whether KVM can run this host's guests: the device, libvirt's capabilities, the module kind."""

from __future__ import annotations

import os
from pathlib import Path

# Paravirtualized nested KVM modules expose /dev/kvm but cannot run stock guest kernels.
PARAVIRT_KVM_MODULES = ("kvm_pvm",)


def probe_kvm(sysfs: Path = Path("/sys"), dev: Path = Path("/dev/kvm")) -> str | None:
    """None when KVM is usable as far as the host shows; otherwise the reason, in one line."""
    for module in PARAVIRT_KVM_MODULES:
        if (sysfs / "module" / module).exists():
            return (
                f"/dev/kvm belongs to the paravirtualized nested module {module}, "
                "which hangs stock guest kernels"
            )
    try:
        fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{dev} does not exist (no KVM module loaded, or virtualization is off in firmware)"
    except PermissionError:
        return f"{dev} cannot be opened by the broker (permission denied)"
    os.close(fd)
    return None

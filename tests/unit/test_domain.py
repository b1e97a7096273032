"""Domain XML: compared with expected files (VMLAUNCH_REGENERATE=1 rewrites them) and checked
against libvirt's own schema with virt-xml-validate."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from vmlaunch.vm.domain import Accel, Disk, DomainSpec, Share, render_domain

EXPECTED = Path(__file__).parent / "expected"


def spec(accel: Accel = Accel.TCG, shares: tuple[Share, ...] = ()) -> DomainSpec:
    run = Path("/var/lib/vmlaunch/runs/0123456789ab")
    store = Path("/var/lib/vmlaunch/store/sha256")
    return DomainSpec(
        name="vmlaunch-0123456789ab",
        uuid="9d0f6f4e-1f7e-4a51-9d55-2a3c2f0b7d11",
        accel=accel,
        memory_mib=1024,
        vcpus=2,
        kernel=store / "aa",
        initramfs=store / "bb",
        cmdline="console=ttyS0 panic=-1",
        disks=(
            Disk(store / "cc", "vml-guest", shared=True),
            Disk(run / "rootfs.img", "vml-rootfs", shared=False),
            Disk(run / "seed.img", "vml-seed", shared=False),
        ),
        control_socket=run / "control.sock",
        console_log=run / "console.log",
        shares=shares,
    )


CASES = {
    "tcg-plain": spec(),
    "kvm-plain": spec(Accel.KVM),
    "tcg-shares": spec(
        shares=(
            Share("vmlbind0", False, Path("/var/lib/vmlaunch/runs/x/b0.sock")),
            Share("vmlbind1", True, Path("/var/lib/vmlaunch/runs/x/b1.sock")),
        )
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_domain_xml_matches_the_expected_file(name: str) -> None:
    xml = render_domain(CASES[name])
    expected = EXPECTED / f"domain-{name}.xml"
    if os.environ.get("VMLAUNCH_REGENERATE"):
        expected.write_text(xml)
    assert xml == expected.read_text()


@pytest.mark.subprocess
@pytest.mark.parametrize("name", sorted(CASES))
def test_domain_xml_is_valid_for_libvirt(name: str, tmp_path: Path) -> None:
    path = tmp_path / "domain.xml"
    path.write_text(render_domain(CASES[name]))
    result = subprocess.run(
        ["virt-xml-validate", str(path), "domain"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_kvm_passes_the_host_cpu_and_tcg_keeps_qemus_model() -> None:
    assert 'mode="host-passthrough"' in render_domain(spec(Accel.KVM))
    assert "<cpu" not in render_domain(spec(Accel.TCG))
    assert '<domain type="kvm">' in render_domain(spec(Accel.KVM))
    assert '<domain type="qemu">' in render_domain(spec(Accel.TCG))


def test_shared_memory_only_when_something_is_shared() -> None:
    assert "memoryBacking" not in render_domain(CASES["tcg-plain"])
    assert '<access mode="shared" />' in render_domain(CASES["tcg-shares"])


def test_no_secret_reaches_the_xml() -> None:
    xml = render_domain(CASES["tcg-shares"])
    assert "PRIVATE KEY" not in xml and "ssh" not in xml

#!/usr/bin/env bash
# Set up vmlaunch on a fresh Debian 12 machine (as root), then run the demo or the test suite.
#
#   ./setup.sh demo    packages, venv, libvirt, a pairing per epoch, the demo image, the broker;
#                      then runs the demo image as an ordinary user
#   ./setup.sh test    the same set-up, then the whole test suite (pytest; extra arguments go
#                      to pytest, e.g. ./setup.sh test -m 'not guest')
#
# Re-running is cheap: finished builds are reused (guest-images/build and images/build keep
# their work under build/ and skip what is done).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"
venv=$here/.venv
etc=/etc/vmlaunch
store=/var/lib/vmlaunch/store
demo_user=vmluser
test_user=vmltest
packages=(
	libvirt-daemon-system libvirt-clients libvirt-dev pkg-config python3-venv python3-dev gcc
	qemu-system-x86 qemu-utils debootstrap skopeo umoci erofs-utils squashfs-tools
	busybox-static cpio kmod zstd xz-utils binutils uidmap libxml2-utils
)

step() { printf '\n== %s\n' "$*" >&2; }

need_root() {
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup.sh: run as root (it installs packages and starts libvirtd and the broker)" >&2
		exit 1
	fi
}

install_packages() {
	step "Debian packages"
	local missing=()
	for p in "${packages[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -gt 0 ]; then
		apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
	fi
}

install_venv() {
	step "Python environment (.venv)"
	[ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
	"$venv/bin/pip" install -q --upgrade pip
	"$venv/bin/pip" install -q -e "$here[test]"
}

# Without udev, /dev/kvm stays root-only; libvirt then finds KVM "gone" for its QEMU user at
# every start and probes QEMU's capabilities again (minutes under load). Debian's udev rule
# makes it root:kvm 0660; do the same.
fix_kvm_node() {
	if [ -c /dev/kvm ] && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
		chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
	fi
}

# Real clusters run libvirtd under systemd; containers and CI machines have no systemd as PID 1.
start_libvirt() {
	step "libvirtd and virtlogd"
	fix_kvm_node
	if [ "$(cat /proc/1/comm)" = systemd ]; then
		systemctl start virtlogd.socket libvirtd.socket libvirtd.service
	else
		mkdir -p /run/libvirt
		pgrep -x virtlogd >/dev/null || /usr/sbin/virtlogd -d
		pgrep -x libvirtd >/dev/null || /usr/sbin/libvirtd -d
	fi
	for _ in $(seq 50); do
		virsh -c qemu:///system version >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	echo "setup.sh: libvirtd did not come up" >&2
	exit 1
}

# One pairing per epoch: bullseye (2021), bookworm (2023, the shipped default's base), trixie.
build_pairings() {
	for suite in bullseye bookworm trixie; do
		step "$suite pairing (kernel, initramfs, guest image) into $store"
		"$venv/bin/python" guest-images/build --suite "$suite" --store "$store" --catalog-dir kernels
	done
}

build_demo_image() {
	step "demo image images/bullseye-mpich:latest"
	images/build --suite bullseye --packages mpich \
		--label org.supercontainers.glibc=2.31 --label org.supercontainers.mpi=mpich \
		--out images/bullseye-mpich:latest
}

configure() {
	step "admin configuration $etc/config.yaml"
	mkdir -p "$etc"
	cat >"$etc/config.yaml.new" <<-EOF
		# Written by vmlaunch's setup.sh. The administrator's settings: users cannot override
		# catalog_dir, store_dir, runs_dir or the limits.
		catalog_dir: $here/kernels
		store_dir: $store
		runs_dir: /var/lib/vmlaunch/runs
		broker_socket: /run/vmlaunch/broker.sock
	EOF
	mv "$etc/config.yaml.new" "$etc/config.yaml"
}

# The broker is the one privileged component; restart it so it runs this checkout's code.
start_broker() {
	step "vmlaunch-broker"
	if [ "$(cat /proc/1/comm)" = systemd ]; then
		sed "s|@VENV@|$venv|" ansible/roles/vmlaunch_host/files/vmlaunch-broker.service \
			>/etc/systemd/system/vmlaunch-broker.service
		systemctl daemon-reload
		systemctl restart vmlaunch-broker.service
	else
		pkill -f "$venv/bin/vmlaunch-broker" 2>/dev/null || true
		mkdir -p /run/vmlaunch /var/log/vmlaunch
		nohup "$venv/bin/vmlaunch-broker" >>/var/log/vmlaunch/broker.log 2>&1 </dev/null &
	fi
	for _ in $(seq 50); do
		[ -S /run/vmlaunch/broker.sock ] && return 0
		sleep 0.2
	done
	echo "setup.sh: the broker did not start; see /var/log/vmlaunch/broker.log" >&2
	exit 1
}

# An ordinary user, in no privileged group, to show and test what users can do.
ensure_user() {
	id "$1" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$1"
}

# KVM is never a silent choice: where it is unusable, say why and use TCG explicitly.
accel_for_this_host() {
	local reason
	reason=$("$venv/bin/python" -c 'from vmlaunch.host.accel import probe_kvm; print(probe_kvm() or "")')
	if [ -n "$reason" ]; then
		echo "setup.sh: KVM is unusable here ($reason): using --accel tcg" >&2
		echo tcg
	else
		echo kvm
	fi
}

run_demo() {
	ensure_user "$demo_user"
	local accel data
	accel=$(accel_for_this_host)
	data=$(runuser -u "$demo_user" -- mktemp -d)
	step "demo: vmlaunch run as $demo_user (accel $accel)"
	(
		set -x
		runuser -u "$demo_user" -- "$venv/bin/vmlaunch" run --accel "$accel" \
			--bind "$data:/data" oci:images/bullseye-mpich:latest -- \
			sh -c 'ldd --version | head -n1; id; echo written-in-guest >/data/hello'
	)
	ls -l "$data/hello"
	runuser -u "$demo_user" -- rm -rf "$data"
}

run_tests() {
	ensure_user "$test_user"
	ensure_user "$demo_user" # a second ordinary user: runs must stay private between users
	install -d -o "$test_user" -g "$test_user" "/home/$test_user/.config/vmlaunch"
	# This machine's KVM cannot run stock guest kernels: the tests use TCG, said here once.
	echo "accel: $(accel_for_this_host)" >"/home/$test_user/.config/vmlaunch/config.yaml"
	chown "$test_user:" "/home/$test_user/.config/vmlaunch/config.yaml"
	step "test suite"
	local status=0
	VMLAUNCH_TEST_USER=$test_user VMLAUNCH_TEST_OTHER_USER=$demo_user \
		"$venv/bin/pytest" "$@" || status=$?
	if [ "$status" -eq 5 ]; then
		echo "setup.sh: pytest collected no tests: that is a failure" >&2
		exit 1
	fi
	exit "$status"
}

main() {
	local mode=${1:-}
	shift || true
	case "$mode" in
	demo | test) ;;
	*)
		sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
		exit 2
		;;
	esac
	need_root
	install_packages
	install_venv
	start_libvirt
	build_pairings
	build_demo_image
	configure
	start_broker
	if [ "$mode" = demo ]; then run_demo; else run_tests "$@"; fi
}

main "$@"

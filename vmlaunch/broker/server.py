"""vmlaunch-broker: the one privileged component.

A root daemon on a unix socket. It knows each caller by SO_PEERCRED, applies the admin's
configuration (catalog, store, limits), and alone talks to libvirt. A run lives exactly as
long as the caller's connection: when the launcher exits or dies, the broker destroys the guest,
stops its virtiofsds and removes the run's files. Runs use libvirt's autodestroy, so a broker
that dies takes its guests with it; at start it removes what such a death left behind.

A daemon rather than a setuid helper: it holds no state of the caller's environment (no
inherited variables, descriptors or limits to sanitize), and the run's lifetime follows a
socket, which the kernel closes however the launcher ends.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from vmlaunch.broker import protocol, runs
from vmlaunch.catalog.load import load_catalog
from vmlaunch.catalog.store import VerifiedStore
from vmlaunch.config.settings import Config, load_config
from vmlaunch.errors import VmlaunchError

log = logging.getLogger(__name__)


class Broker:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = VerifiedStore(config.path("store_dir"))
        self.runs: dict[str, runs.Run] = {}
        self.runs_of: dict[int, int] = {}
        self.lock = threading.Lock()

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError as e:
                # Out of descriptors or memory: refuse this caller, keep serving the others.
                log.warning("cannot accept a connection: %s", e)
                time.sleep(0.1)
                continue
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        peer = runs.peer_of(conn)
        run: runs.Run | None = None
        try:
            while True:
                message, fds = protocol.recv_message(conn)
                try:
                    run = self.dispatch(conn, peer, message, fds, run)
                except VmlaunchError as e:
                    protocol.send_message(conn, {"ok": False, "error": e.message, "hint": e.hint})
                except (KeyError, TypeError, ValueError) as e:
                    error = f"malformed {message.get('op')!r} request to the broker: {e!r}"
                    hint = "the launcher and the broker must be the same vmlaunch release"
                    protocol.send_message(conn, {"ok": False, "error": error, "hint": hint})
                finally:
                    for fd in fds:
                        os.close(fd)
        except (protocol.ProtocolError, OSError) as e:
            log.debug("connection of uid %d ends: %s", peer.uid, e)
        finally:
            conn.close()
            if run is not None:
                self.end(run)

    def dispatch(
        self,
        conn: socket.socket,
        peer: runs.Peer,
        message: dict[str, Any],
        fds: list[int],
        run: runs.Run | None,
    ) -> runs.Run | None:
        op = message.get("op")
        if op == "hello":
            protocol.send_message(conn, {"ok": True, "version": protocol.VERSION, "uid": peer.uid})
        elif op == "start":
            if run is not None:
                raise VmlaunchError("this connection already has a run")
            return self.start(conn, peer, message, fds)
        elif op == "list":
            listed = [r.describe() for r in self.visible(peer)]
            protocol.send_message(conn, {"ok": True, "runs": listed})
        elif op == "stop":
            other = self.find(peer, str(message["run"]))
            log.info("run %s stopped by %s (uid %d)", other.id, peer.name, peer.uid)
            runs.stop(other)
            protocol.send_message(conn, {"ok": True})
        elif op == "logs":
            other = self.find(peer, str(message["run"]))
            console = os.open(other.directory / "console.log", os.O_RDONLY | os.O_CLOEXEC)
            try:
                protocol.send_message(conn, {"ok": True}, [console])
            finally:
                os.close(console)
        elif op == "finished" and run is not None:
            run.status = int(message["status"])
            protocol.send_message(conn, {"ok": True})
        elif op == "gc":
            with self.lock:
                live = set(self.runs)
            removed = runs.gc_runs(self.config.path("runs_dir"), live) if peer.uid == 0 else []
            protocol.send_message(conn, {"ok": True, "removed": removed})
        else:
            raise VmlaunchError(f"unknown broker operation {op!r}")
        return run

    def visible(self, peer: runs.Peer) -> list[runs.Run]:
        """The caller's runs; root sees every run."""
        with self.lock:
            return [r for r in self.runs.values() if peer.uid in (0, r.peer.uid)]

    def find(self, peer: runs.Peer, run_id: str) -> runs.Run:
        for run in self.visible(peer):
            if run.id == run_id:
                return run
        # Another user's run is reported exactly like a run that does not exist.
        raise VmlaunchError(f"no run {run_id} of yours is running", "see `vmlaunch ps`")

    def start(
        self, conn: socket.socket, peer: runs.Peer, message: dict[str, Any], fds: list[int]
    ) -> runs.Run:
        catalog = load_catalog(self.config.path("catalog_dir"))
        with self.lock:
            if self.runs_of.get(peer.uid, 0) >= self.config["max_runs"]:
                raise VmlaunchError(
                    f"you have {self.config['max_runs']} runs already, the most this host "
                    "allows at once",
                    "wait for one to end, or ask the administrator (max_runs)",
                )
            run = runs.prepare_run(peer, message, self.config, catalog, self.store)
            self.runs[run.id] = run
            self.runs_of[peer.uid] = self.runs_of.get(peer.uid, 0) + 1
        try:
            control, console = runs.boot(run, message, fds, self.config, self.store)
            try:
                reply = {"ok": True, "run": run.id, "pairing": run.pairing.id,
                         "user": runs.guest_login(peer.uid)}  # fmt: skip
                protocol.send_message(conn, reply, [control.fileno(), console])
            finally:
                control.close()
                os.close(console)
        except BaseException:
            self.end(run)
            raise
        return run

    def end(self, run: runs.Run) -> None:
        runs.finish(run)
        with self.lock:
            if self.runs.pop(run.id, None) is None:
                return
            self.runs_of[run.peer.uid] -= 1
        runs.audit(run)


def listen(path: Path) -> socket.socket:
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    # Anyone may ask; the broker decides by the caller's uid what to grant.
    path.chmod(0o666)
    listener.listen(64)
    return listener


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vmlaunch-broker",
        description="vmlaunch's privileged broker: boots guests for ordinary users "
        "within the administrator's policy. Runs as root.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="the admin configuration file (default /etc/vmlaunch/config.yaml)",
    )
    parser.add_argument("--socket", type=Path, help="listen here instead of broker_socket")
    parser.add_argument("--debug", action="store_true", help="log every step and the XML")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(name)s: %(message)s",
    )
    if args.config:
        os.environ["VMLAUNCH_SYSTEM_CONFIG"] = str(args.config)
    if os.geteuid() != 0:
        print("vmlaunch-broker: must run as root", file=sys.stderr)
        return 1
    try:
        config = load_config(admin_only=True)
        removed = runs.gc_runs(config.path("runs_dir"), set())
        if removed:
            log.info("removed state of %d runs of an earlier broker", len(removed))
        listener = listen(args.socket or config.path("broker_socket"))
    except VmlaunchError as e:
        print(f"vmlaunch-broker: {e}", file=sys.stderr)
        return 1
    log.info("listening on %s", listener.getsockname())
    Broker(config).serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())

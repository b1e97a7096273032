"""The `vmlaunch` command: options and rendering only; the work happens in the packages."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vmlaunch import __version__
from vmlaunch.config.settings import SETTINGS, load_config, system_config_path, user_config_path
from vmlaunch.errors import Interrupted, VmlaunchError

EXIT_FAILURE = 125

EXIT_CODES = """\
exit status:
  N      the command's own exit status
  125    vmlaunch itself failed (bad input, no broker, the guest did not boot)
  126    the command was found but cannot be run
  127    the command was not found in the container
  128+N  the command, or vmlaunch, was ended by signal N (130 for Ctrl-C)
"""

RUN_EXAMPLES = """\
examples:
  vmlaunch run oci:images/bullseye-mpich:latest -- ldd --version
  vmlaunch run --bind $PWD/data:/data --workdir /data oci:images/app:1.0 -- ./solve
  vmlaunch run oci:images/app:1.0            # the image's Entrypoint and Cmd
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="vmlaunch: %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except VmlaunchError as e:
        if args.debug:
            logging.exception("failed")
        print(f"vmlaunch: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"vmlaunch: hint: {e.hint}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("vmlaunch: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Interrupted as e:
        print(f"vmlaunch: ended by {e}; the guest was destroyed", file=sys.stderr)
        return 128 + int(e.signum)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vmlaunch",
        description="Run HPC container images inside curated lightweight VMs.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vmlaunch {__version__}")
    parser.add_argument("--debug", action="store_true", help="log each step; show tracebacks")
    parser.set_defaults(handler=lambda _args: _print_help(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_run(commands)
    _add_lifecycle(commands)
    _add_gc(commands)
    _add_config(commands)
    return parser


def _add_run(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run an image's command inside a guest booted for this run",
        description="Boot a guest for this run and run the image's command in a container "
        "inside it, as you (your uid, gid and groups), never as root on the host.",
        epilog=RUN_EXAMPLES + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("image", help="the image, in skopeo's syntax: oci:DIR[:TAG]")
    run.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="the command and its arguments (after --); default: the image's Entrypoint and Cmd",
    )
    run.add_argument(
        "--bind",
        action="append",
        default=[],
        metavar="SRC:DST[:ro]",
        help="share host directory SRC at DST in the container (repeatable)",
    )
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY=VAL",
        help="set an environment variable in the container (repeatable)",
    )
    run.add_argument(
        "--env-file",
        type=Path,
        action="append",
        default=[],
        help="read KEY=VAL lines from a file (repeatable)",
    )
    run.add_argument("-w", "--workdir", help="the command's working directory in the container")
    run.add_argument("--memory", type=int, help="guest memory in MiB (config: memory)")
    run.add_argument("--cpus", type=int, help="guest vCPUs (config: cpus)")
    run.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        help="kvm, or tcg (software emulation, slow); auto uses KVM and fails "
        "with the reason when it is unusable (config: accel)",
    )
    run.add_argument(
        "--boot-timeout",
        type=float,
        metavar="SECONDS",
        help="give up when the guest is not ready by then (config: boot_timeout)",
    )
    run.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="stop the command after this wall time"
    )
    run.add_argument("--pairing", help="run on this pairing of the catalog (EPOCH/NAME[@REV])")
    run.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from vmlaunch.launch.run import RunOptions, launch, parse_bind

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    config = load_config(
        {
            "memory": args.memory,
            "cpus": args.cpus,
            "accel": args.accel,
            "boot_timeout": args.boot_timeout,
        }
    )
    env = [line for path in args.env_file for line in _read_env_file(path)] + args.env
    options = RunOptions(
        image=args.image,
        command=tuple(command),
        binds=tuple(parse_bind(b) for b in args.bind),
        env=tuple(env),
        workdir=args.workdir,
        timeout=args.timeout,
        pairing=args.pairing,
    )
    return launch(options, config, progress=sys.stderr.isatty())


def _read_env_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise VmlaunchError(f"--env-file {path}: {e.strerror}") from e
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for entry in entries:
        if "=" not in entry:
            raise VmlaunchError(f"--env-file {path}: {entry!r} is not KEY=VALUE")
    return entries


def _add_lifecycle(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ps = commands.add_parser(
        "ps", help="list your running guests (root: everyone's)",
        description="List the runs the broker holds for you; root sees every user's.",
    )  # fmt: skip
    ps.add_argument("--json", action="store_true", help="print the runs as JSON")
    ps.set_defaults(handler=_ps)
    stop = commands.add_parser(
        "stop", help="destroy a run's guest now",
        description="Destroy the guest of one of your runs at once (root: anyone's). Its "
        "launcher reports that the guest ended.",
    )  # fmt: skip
    stop.add_argument("run", help="the run's id, as `vmlaunch ps` shows it")
    stop.set_defaults(handler=_stop)
    logs = commands.add_parser(
        "logs", help="print a running guest's console",
        description="Print the console (kernel and boot messages) of one of your runs.",
    )  # fmt: skip
    logs.add_argument("run", help="the run's id, as `vmlaunch ps` shows it")
    logs.set_defaults(handler=_logs)


def _broker_call(message: dict[str, object]) -> tuple[dict[str, object], list[int]]:
    from vmlaunch.broker.client import BrokerClient

    broker = BrokerClient(load_config().path("broker_socket"))
    try:
        return broker.call(message)
    finally:
        broker.close()


def _ps(args: argparse.Namespace) -> int:
    reply, _ = _broker_call({"op": "list"})
    listed = list(reply["runs"])  # type: ignore[call-overload]
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    print(f"{'RUN':<13} {'USER':<12} {'AGE':>6}  {'PAIRING':<32} IMAGE")
    for run in listed:
        age = f"{time.time() - float(run['started']):.0f}s"
        print(f"{run['run']:<13} {run['user']:<12} {age:>6}  {run['pairing']:<32} {run['image']}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    _broker_call({"op": "stop", "run": args.run})
    return 0


def _logs(args: argparse.Namespace) -> int:
    _reply, fds = _broker_call({"op": "logs", "run": args.run})
    with open(fds[0], "rb") as console:
        sys.stdout.buffer.write(console.read())
    return 0


def _add_gc(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gc = commands.add_parser(
        "gc",
        help="remove guests and state left by launchers or brokers that died",
        description="Ask the broker to remove guests and per-run state that no live "
        "launcher owns. Runs end with their launcher, so this finds something only after "
        "a broker crash. Root only.",
    )
    gc.add_argument("--json", action="store_true", help="print the result as JSON")
    gc.set_defaults(handler=_gc)


def _gc(args: argparse.Namespace) -> int:
    from vmlaunch.broker.client import BrokerClient

    config = load_config()
    broker = BrokerClient(config.path("broker_socket"))
    try:
        reply, _ = broker.call({"op": "gc"})
    finally:
        broker.close()
    removed = list(reply.get("removed", []))
    if args.json:
        print(json.dumps({"removed": removed}))
    else:
        print("\n".join(f"removed run {r}" for r in removed) or "nothing to remove")
    return 0


def _add_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config", help="show the configuration and where each value comes from"
    )
    actions = config.add_subparsers(title="actions", metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print each setting, its value and its origin",
        description=f"Layers, lowest first: defaults, "
        f"{system_config_path()}, {user_config_path()}, VMLAUNCH_* "
        "variables, command-line options.",
    )
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(handler=_config_show)
    config.set_defaults(handler=lambda _a: _print_help(config))


def _config_show(args: argparse.Namespace) -> int:
    config = load_config()
    if args.json:
        print(
            json.dumps(
                {k: {"value": v.value, "origin": v.origin} for k, v in config.items()}, indent=2
            )
        )
        return 0
    width = max(len(s.name) for s in SETTINGS)
    for name, value in config.items():
        print(f"{name:<{width}}  {value.value!s:<30}  {value.origin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

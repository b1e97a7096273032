"""The one exception type the CLI turns into a clear line and exit status 125."""

from __future__ import annotations

import signal


class VmlaunchError(Exception):
    """A failure the user can act on: what went wrong, and how to fix it.

    `message` names the bad input or the failed step; `hint` says what to do. The CLI prints
    both on one or two lines and exits 125; a traceback appears only with --debug.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ImageError(VmlaunchError):
    """An image reference, blob or layer that cannot be used."""


class CatalogError(VmlaunchError):
    """A catalog file or artifact that is missing, malformed or does not match its digest."""


class HostError(VmlaunchError):
    """The host lacks something vmlaunch needs (libvirtd, KVM, a device)."""


class GuestError(VmlaunchError):
    """The guest failed to boot, to become ready, or to run the agent."""


class Interrupted(Exception):
    """A second signal, or the grace period after the first, ended the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

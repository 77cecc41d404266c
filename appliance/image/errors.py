"""Errors of the image build and its verification, split by cause.

Each carries a stable ``code`` (tests, ``--json``, docs/image.md) and an exit
status, so a CI log or a technician's script can tell "a package is missing"
from "the network is down" from "this artefact was tampered with" without
reading the message.  Messages say what went wrong and what to do next.
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_NETWORK",
    "EXIT_PACKAGE",
    "EXIT_SETUP",
    "EXIT_USAGE",
    "BuildError",
    "ImageError",
    "VerifyError",
]

EXIT_FAILED = 1  # the build failed (log names the step) / verification refused the artefacts
EXIT_USAGE = 2  # bad option, unreadable key or package list
EXIT_PACKAGE = 3  # a Debian package or a pinned wheel does not exist
EXIT_NETWORK = 4  # the Debian mirror or PyPI cannot be reached
EXIT_SETUP = 5  # this machine cannot build: not root, a tool missing


class ImageError(Exception):
    """Base of this package's errors."""

    code = "image.error"
    exit_status = EXIT_FAILED

    def __init__(self, message: str, *, code: str | None = None, exit_status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if exit_status is not None:
            self.exit_status = exit_status

    def to_json(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "exit_status": self.exit_status}


class BuildError(ImageError):
    """The image could not be built; nothing was written to the dist folder.

    Codes: ``build.package_missing``, ``build.network``, ``build.setup``,
    ``build.config``, ``build.wheels``, ``build.mmdebstrap``, ``build.agent``,
    ``build.setup_script``, ``build.policy``, ``build.archive``.
    """

    code = "build.failed"


class VerifyError(ImageError):
    """The artefacts do not match their signed checksums, or the signature is not valid.

    Codes: ``verify.signature``, ``verify.hash``, ``verify.missing``,
    ``verify.format``, ``verify.key``.
    """

    code = "verify.failed"

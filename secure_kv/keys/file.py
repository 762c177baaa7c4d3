"""Master keys from a file: one key per line, current first, previous keys after."""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from secure_kv.errors import ConfigurationError, MasterKeyError
from secure_kv.keys.base import MasterKey, RawKeyProvider, RawMasterKey, ReloadingProvider, parse_master_key

if TYPE_CHECKING:
    from secure_kv.settings import Settings

__all__ = ["FileMasterKey"]

log = logging.getLogger("secure_kv.keys")


class FileMasterKey(ReloadingProvider, RawKeyProvider):
    """Keys from ``path`` (``SECURE_KV_MASTER_KEY_FILE``).

    Blank lines and lines starting with ``#`` are ignored. On POSIX the file must be a
    regular file, not a symbolic link, owned by the current user or root, with no
    permission for group or others (``chmod 600``), in a directory owned by the current
    user or root that group and others cannot write: whoever can write the file or its
    directory can plant a key, and whoever can read it holds every value. It is opened
    once (``O_NOFOLLOW``, relative to the directory opened first) and the checks are made
    on what was opened, so nothing can be swapped between check and read. Asked for a key
    it does not hold (a data key rewrapped by a rotation), and at most every 60 seconds, it
    reads the file again with the same checks; a file that fails them then is not used
    (the keys read before stay, with a warning).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        super().__init__(self._load())
        self._loaded()

    @classmethod
    def from_settings(cls, settings: Settings, *, create: bool = False) -> FileMasterKey:
        if settings.master_key_file is None:
            raise ConfigurationError("SECURE_KV_KEY_PROVIDER=file needs SECURE_KV_MASTER_KEY_FILE (a path)")
        return cls(settings.master_key_file)

    def current_key(self) -> MasterKey:
        self._reload_if_older_than(self.CURRENT_MAX_AGE)
        return super().current_key()

    def _reload(self) -> None:
        try:
            self._keys = self._load()
        except MasterKeyError as error:  # keep the keys we have; say why the new ones are not read
            log.warning("master key file %s could not be read again: %s", self.path, error)

    def _load(self) -> list[RawMasterKey]:
        try:
            text = (
                _read_private_file(self.path) if os.name == "posix" else self.path.read_text(encoding="utf-8")
            )
        except FileNotFoundError:
            raise MasterKeyError(
                f"master key file {self.path} does not exist: create it with "
                f"`secure-kv keygen > {self.path} && chmod 600 {self.path}`"
            ) from None
        except (OSError, UnicodeDecodeError) as error:
            raise MasterKeyError(
                f"cannot read master key file {self.path}: {error.__class__.__name__}"
            ) from None
        keys: list[RawMasterKey] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                keys.append(parse_master_key(line, f"line {number} of {self.path}"))
        if not keys:
            raise MasterKeyError(f"master key file {self.path} holds no key")
        return keys


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _read_private_file(path: Path) -> str:
    """Open ``path`` once, check what was opened, and read it (POSIX).

    The directory is opened first and checked, then the file relative to it with
    ``O_NOFOLLOW``, and both are checked with ``fstat`` on the open descriptors.
    """
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
    directory = os.open(path.parent, flags | getattr(os, "O_DIRECTORY", 0))
    try:
        info = os.fstat(directory)
        if not _trusted_owner(info.st_uid):
            raise MasterKeyError(
                f"the directory of master key file {path} belongs to another user (uid {info.st_uid}): "
                "keep the file in a directory of your own"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise MasterKeyError(
                f"the directory of master key file {path} is writable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):o}): others could replace the file; run "
                f"`chmod go-w {path.parent}` or move the file to a private directory"
            )
        try:
            # O_NONBLOCK: a FIFO planted under the name must not hang the open.
            descriptor = os.open(path.name, flags | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise MasterKeyError(
                    f"master key file {path} is a symbolic link: point SECURE_KV_MASTER_KEY_FILE at "
                    "the file itself"
                ) from None
            raise
    finally:
        os.close(directory)
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"master key file {path} is not a regular file")
        if not _trusted_owner(info.st_uid):
            raise MasterKeyError(
                f"master key file {path} belongs to another user (uid {info.st_uid}): "
                f"`chown` it to the user running secure_kv and `chmod 600 {path}`"
            )
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise MasterKeyError(
                f"master key file {path} is open to group or others "
                f"(mode {stat.S_IMODE(info.st_mode):o}): run `chmod 600 {path}`"
            )
        data = file.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise MasterKeyError(f"master key file {path} is over 1 MiB: it is not a file of keys")
        return data.decode("utf-8")


# A file of keys is a few lines; anything larger is not one, and is not read whole.
_MAX_FILE_BYTES = 1 << 20

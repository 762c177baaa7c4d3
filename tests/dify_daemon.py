"""``InMemoryDifyDaemon``: a stand-in for Dify's plugin daemon, in this process, that the
real ``dify_plugin`` SDK talks to.

Only the daemon is fake. Each :meth:`InMemoryDifyDaemon.connect` gives a real
``dify_plugin.core.runtime.Session`` installed as ``InstallMethod.Local`` (the plugin
process the daemon starts), whose ``session.storage`` is the SDK's real
``StorageInvocation``. Its requests run through the SDK's own code: ``hexlify`` of the
value, ``BackwardsInvocation._full_duplex_backwards_invoke``, the ``ResponseWriter``
framing of each request as one JSON line, ``StdioRequestReader`` parsing the daemon's
replies, and the ``RequestReader``/``FilterReader`` dispatch by ``backwards_request_id``.
The two transport ends are the only SDK classes subclassed here: the writer hands each line
to the daemon instead of stdout, and the reader's ``_read_async`` (``tp_read`` on stdin in
the SDK) returns the daemon's replies.

The daemon side follows langgenius/dify-plugin-daemon (read for this):
``internal/core/io_tunnel/backwards_invocation/task.go`` (``executeDifyInvocationStorageTask``:
the replies and their error texts), ``internal/core/persistence/persistence.go`` (key rules,
quota), ``internal/core/persistence/wrapper.go`` (keys are ``path.Clean``-ed file paths under
``<tenant>/<plugin>/``), ``internal/core/local_runtime/instance.go`` with
``internal/types/app/config.go`` (a plugin's output line may be at most 5 MiB).

``import dify_plugin`` runs ``gevent.monkey.patch_all()``: right in a plugin process, wrong
in this test process, whose database drivers, threads and subprocesses must stay as they
are. :func:`import_sdk` imports the SDK with that one call skipped; the SDK code itself is
unchanged. ``test_it_works_in_a_plugin_process_patched_by_gevent`` (tests/integrations/test_dify.py) runs
the same stack in a child process with the patching on.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# The daemon's defaults (internal/types/app/config.go, internal/types/app/default.go).
MAX_LINE_BYTES = 5 * 1024 * 1024  # PLUGIN_RUNTIME_MAX_BUFFER_SIZE
PERSISTENCE_STORAGE_MAX_SIZE = 100 * 1024 * 1024
# The daemon's error texts (task.go, persistence.go).
LOAD_FAILED = "load data failed, please check if the key is correct or you have not set it"
PATH_TRAVERSAL = "invalid key: path traversal attempt detected"


def import_sdk() -> None:
    """Import ``dify_plugin`` without its process-wide ``gevent.monkey.patch_all()``."""
    import sys

    if "dify_plugin" in sys.modules:
        return
    import gevent.monkey

    patch_all = gevent.monkey.patch_all
    gevent.monkey.patch_all = lambda *args, **kwargs: None
    try:
        import dify_plugin  # noqa: F401
    finally:
        gevent.monkey.patch_all = patch_all


def go_path_clean(path: str) -> str:
    """Go's ``path.Clean``, which the daemon applies to every key."""
    if path == "":
        return "."
    rooted = path.startswith("/")
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(segment)
    cleaned = "/".join(parts)
    if rooted:
        return "/" + cleaned
    return cleaned or "."


class DaemonError(Exception):
    """The daemon refused a request; its text is what the plugin receives."""


class LineTooLong(Exception):
    """The plugin wrote a line longer than the daemon reads: the real daemon stops the plugin."""


@dataclass
class StorageRequest:
    """One storage request as the daemon received it (``value`` still in hex)."""

    opt: str
    key: str
    value: str | None
    line_bytes: int


@dataclass
class InMemoryDifyDaemon:
    """The storage side of Dify's plugin daemon, for one tenant and one plugin.

    ``files`` is the daemon's backing store (its OSS wrapper), keyed by the file path the
    daemon would write: ``persistence/<tenant>/<plugin>/<path.Clean(key)>``; the values
    are the bytes Dify keeps, in plaintext. ``requests`` records every storage request,
    ``lines`` every line the plugin wrote. ``before_request``, if set, runs in the
    plugin's thread before the daemon handles a request (tests use it to order races).
    """

    tenant_id: str = "tenant-1"
    plugin_id: str = "acme/secrets-plugin"
    quota_bytes: int = PERSISTENCE_STORAGE_MAX_SIZE
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[StorageRequest] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    before_request: Callable[[StorageRequest], None] | None = None
    fail_loads: bool = False
    _connections: list[Any] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- What a test inspects --------------------------------------------------------

    def path(self, key: str) -> str:
        return go_path_clean(f"persistence/{self.tenant_id}/{self.plugin_id}/{go_path_clean(key)}")

    def stored(self, key: str) -> bytes:
        return self.files[self.path(key)]

    def replace(self, key: str, value: bytes) -> None:
        """Change what Dify holds under ``key``, as someone with access to its storage can."""
        self.files[self.path(key)] = value

    def keys(self) -> list[str]:
        prefix = self.path("x")[:-1]
        return sorted(path[len(prefix) :] for path in self.files)

    # --- Plugin processes ------------------------------------------------------------

    def connect(self, *, max_invocation_timeout: int = 60) -> Any:
        """A real SDK ``Session`` of a new plugin process connected to this daemon."""
        import_sdk()
        from dify_plugin.config.config import InstallMethod
        from dify_plugin.core.runtime import Session

        connection = _Connection(self)
        session = Session(
            session_id=str(uuid.uuid4()),
            executor=connection.executor,
            reader=connection.stdin,
            writer=connection.stdout,
            install_method=InstallMethod.Local,
            max_invocation_timeout=max_invocation_timeout,
        )
        self._connections.append(connection)
        return session

    def close(self) -> None:
        for connection in self._connections:
            connection.close()
        self._connections.clear()

    # --- The daemon's side of a request ----------------------------------------------

    def receive(self, line: str, connection: _Connection) -> None:
        """Handle one line the plugin wrote to its stdout."""
        size = len(line.encode("utf-8"))
        if size + 1 > MAX_LINE_BYTES:  # bufio.Scanner needs the line and its newline
            raise LineTooLong(f"plugin wrote a {size}-byte line; the daemon reads at most {MAX_LINE_BYTES}")
        self.lines.append(line)
        message = json.loads(line)
        if message.get("event") != "session" or message["data"].get("type") != "invoke":
            return
        invoke = message["data"]["data"]
        if invoke.get("type") != "storage":
            raise AssertionError(f"unexpected backwards invocation {invoke.get('type')!r}")
        raw = invoke["request"]
        request = StorageRequest(raw["opt"], raw.get("key", ""), raw.get("value"), size)
        if self.before_request is not None:
            self.before_request(request)
        try:
            with self._lock:
                self.requests.append(request)
                data = self._execute(request)
            reply = {"event": "response", "message": "struct", "data": data}
        except DaemonError as error:
            reply = {"event": "error", "message": str(error), "data": None}
        connection.reply(message["session_id"], invoke["backwards_request_id"], reply)

    def _execute(self, request: StorageRequest) -> dict[str, Any]:
        if not request.key:  # validate:"required" on InvokeStorageRequest.Key
            raise DaemonError("unmarshal backwards invoke request failed: Key is required")
        cleaned = go_path_clean(request.key)
        traversal = ".." in cleaned or "//" in cleaned or "\\" in cleaned
        path = self.path(request.key)
        if request.opt == "get":
            if traversal or self.fail_loads or path not in self.files:
                raise DaemonError(LOAD_FAILED)
            return {"data": self.files[path].hex()}
        if request.opt == "set":
            try:
                data = bytes.fromhex(request.value or "")
            except ValueError as error:
                raise DaemonError(f"decode data failed: {error}") from None
            if traversal:
                raise DaemonError(f"save data failed: {PATH_TRAVERSAL}")
            if len(request.key.encode("utf-8")) > 256:
                raise DaemonError("save data failed: key length must be less than 256 characters")
            used = sum(len(value) for name, value in self.files.items() if name != path)
            if used + len(data) > self.quota_bytes:
                raise DaemonError("save data failed: allocated size is greater than max storage size")
            self.files[path] = data
            return {"data": "ok"}
        if request.opt == "del":
            if traversal:
                raise DaemonError(f"delete data failed: {PATH_TRAVERSAL}")
            if path not in self.files:  # the OSS wrapper cannot stat a missing file
                raise DaemonError(f"delete data failed: stat {path}: no such file or directory")
            del self.files[path]
            return {"data": "ok", "deleted_num": 0}
        if request.opt == "exist":
            if traversal:
                raise DaemonError(f"exist data failed: {PATH_TRAVERSAL}")
            found = path in self.files
            return {"data": found, "exist_num": int(found)}
        raise DaemonError("unmarshal backwards invoke request failed: invalid opt")


class _PipeClosed(Exception):
    pass


class _Connection:
    """The stdin/stdout pair between the daemon and one plugin process."""

    def __init__(self, daemon: InMemoryDifyDaemon) -> None:
        import_sdk()
        self.daemon = daemon
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.stdin = _make_stdin()
        self.stdout = _make_stdout(self)
        self._pump = threading.Thread(target=self._run_stdin, name="dify-daemon-stdin", daemon=True)
        self._pump.start()

    def reply(self, session_id: str, request_id: str, event: dict[str, Any]) -> None:
        """Queue the daemon's reply and its end marker, as two JSON lines on the plugin's stdin."""
        end = {"event": "end", "message": "", "data": None}
        lines = b"".join(
            json.dumps(
                {
                    "session_id": session_id,
                    "conversation_id": None,
                    "message_id": None,
                    "app_id": None,
                    "endpoint_id": None,
                    "context": None,
                    "event": "backwards_response",
                    "data": {"backwards_request_id": request_id, **body},
                }
            ).encode()
            + b"\n"
            for body in (event, end)
        )
        self.stdin.deliver(request_id, lines)

    def _run_stdin(self) -> None:
        # RequestReader.event_loop without its retry-forever loop, so the thread can end.
        try:
            for stream in self.stdin._read_stream():
                self.stdin._process_line(stream)
        except _PipeClosed:
            return

    def close(self) -> None:
        self.stdin.close_pipe()
        self._pump.join(timeout=30)
        self.executor.shutdown(wait=False)


def _make_stdin() -> Any:
    from dify_plugin.core.entities.plugin.io import PluginInStream, PluginInStreamEvent
    from dify_plugin.core.server.stdio.request_reader import StdioRequestReader
    from dify_plugin.core.server.stdio.response_writer import StdioResponseWriter

    class DaemonToPluginPipe(StdioRequestReader):  # type: ignore[misc]
        """The plugin's stdin: the SDK's own reader, fed by the daemon instead of fd 0."""

        def __init__(self) -> None:
            super().__init__()
            self._chunks: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
            self._listening = threading.Condition()

        def deliver(self, request_id: str, data: bytes) -> None:
            self._chunks.put((request_id, data))

        def close_pipe(self) -> None:
            self._chunks.put(None)

        def _read_async(self) -> bytes:
            item = self._chunks.get()
            if item is None:
                raise _PipeClosed
            request_id, data = item
            # The SDK sends a request, then starts listening for its reply. A real daemon
            # answers long after that; this one waits until the listener is there.
            probe = PluginInStream(
                session_id="",
                event=PluginInStreamEvent.BackwardInvocationResponse,
                data={"backwards_request_id": request_id},
                reader=self,
                writer=StdioResponseWriter(),
            )
            with self._listening:
                self._listening.wait_for(lambda: any(r.filter(probe) for r in list(self.readers)), timeout=60)
            return data

        def read(self, filter: Any) -> Any:
            reader = super().read(filter)
            with self._listening:
                self._listening.notify_all()
            return reader

    return DaemonToPluginPipe()


def _make_stdout(connection: _Connection) -> Any:
    from dify_plugin.core.server.__base.response_writer import ResponseWriter

    class PluginToDaemonPipe(ResponseWriter):  # type: ignore[misc]
        """The plugin's stdout: complete lines go to the daemon."""

        def __init__(self) -> None:
            self._buffer = ""

        def write(self, data: str) -> None:
            self._buffer += data
            *lines, self._buffer = self._buffer.split("\n")
            for line in lines:
                if line.strip():
                    connection.daemon.receive(line, connection)

        def done(self) -> None:
            pass

    return PluginToDaemonPipe()


@contextmanager
def running_daemon(**options: Any) -> Iterator[InMemoryDifyDaemon]:
    daemon = InMemoryDifyDaemon(**options)
    try:
        yield daemon
    finally:
        daemon.close()

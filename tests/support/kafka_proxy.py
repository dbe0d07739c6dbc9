"""A Kafka broker that can hang for one client: the real broker behind a proxy."""

from __future__ import annotations

import socket
import struct
import threading

from aiokafka.protocol import metadata
from aiokafka.protocol.api import Response

from tests.support.tcp_proxy import TcpProxy

METADATA_API_KEY = 3
# The Metadata versions aiokafka speaks; none is a "flexible" version, so the response
# header is the correlation id alone and the body decodes with these classes.
METADATA_RESPONSES = {
    cls.API_VERSION: cls
    for cls in (
        metadata.MetadataResponse_v0,
        metadata.MetadataResponse_v1,
        metadata.MetadataResponse_v2,
        metadata.MetadataResponse_v3,
        metadata.MetadataResponse_v4,
        metadata.MetadataResponse_v5,
    )
}


def read_frame(sock: socket.socket) -> bytes | None:
    """One size-prefixed Kafka frame (without the size), or None at end of stream."""
    header = _read_exactly(sock, 4)
    return None if header is None else _read_exactly(sock, struct.unpack(">i", header)[0])


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 16))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


class KafkaProxy(TcpProxy):
    """A :class:`TcpProxy` in front of a Kafka broker that names itself as every broker in
    metadata responses, so a client's every connection, not only its bootstrap, goes through
    it: :meth:`go_silent` makes the broker hang for the clients of this proxy alone."""

    def _start_pumps(self, client: socket.socket, upstream: socket.socket) -> None:
        versions: dict[int, tuple[int, int]] = {}  # correlation id -> (api key, api version)
        lock = threading.Lock()
        self._spawn(self._requests, client, upstream, versions, lock)
        self._spawn(self._responses, upstream, client, versions, lock)

    def _requests(self, src: socket.socket, dst: socket.socket, versions: dict, lock: threading.Lock) -> None:
        while (frame := read_frame(src)) is not None:
            api_key, api_version, correlation_id = struct.unpack(">hhi", frame[:8])
            with lock:
                versions[correlation_id] = (api_key, api_version)
            self.send(dst, struct.pack(">i", len(frame)) + frame)

    def _responses(
        self, src: socket.socket, dst: socket.socket, versions: dict, lock: threading.Lock
    ) -> None:
        while (frame := read_frame(src)) is not None:
            with lock:
                api_key, api_version = versions.pop(struct.unpack(">i", frame[:4])[0], (-1, -1))
            if api_key == METADATA_API_KEY:
                frame = frame[:4] + self._advertise_self(METADATA_RESPONSES[api_version], frame[4:])
            self.send(dst, struct.pack(">i", len(frame)) + frame)

    def _advertise_self(self, response_class: type[Response], body: bytes) -> bytes:
        response = response_class.decode(body)
        response.brokers = [
            (node_id, "127.0.0.1", self.port, *rest) for node_id, _h, _p, *rest in response.brokers
        ]
        return bytes(response.encode())

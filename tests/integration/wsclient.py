"""A minimal RFC 6455 client for the integration tests and bench/soak.py:
Python standard library only.  One blocking socket; a reader calls recv()
for the next text frame; pings are answered inside recv().

    ws = WSClient("127.0.0.1", port, "/stream/s/ws/c?from_offset=0")
    ev = ws.recv_json(timeout=5)      # one event, or None on timeout
    ws.close()
"""

import base64
import json
import os
import socket
import struct


class WSClosed(Exception):
    """The server closed the connection; code and reason as sent."""

    def __init__(self, code, reason):
        super().__init__("websocket closed: %r %r" % (code, reason))
        self.code, self.reason = code, reason


class WSClient:
    def __init__(self, host, port, path, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (path, host, port, key))
        self.sock.sendall(req.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("connection closed during the WebSocket handshake")
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError("WebSocket upgrade refused: %r" % head[:300])
        self.closed = None

    def _parse(self):
        """One whole frame from the buffer, consumed, or None when incomplete
        (so a timeout never loses part of a frame)."""
        b = self.buf
        if len(b) < 2:
            return None
        opcode, n, at = b[0] & 0x0F, b[1] & 0x7F, 2
        if n == 126:
            if len(b) < 4:
                return None
            n, at = struct.unpack("!H", b[2:4])[0], 4
        elif n == 127:
            if len(b) < 10:
                return None
            n, at = struct.unpack("!Q", b[2:10])[0], 10
        mask = None
        if b[1] & 0x80:
            if len(b) < at + 4:
                return None
            mask, at = b[at:at + 4], at + 4
        if len(b) < at + n:
            return None
        data, self.buf = b[at:at + n], b[at + n:]
        if mask:
            data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
        return b[0] & 0x80, opcode, data

    def _frame(self):
        while True:
            f = self._parse()
            if f is not None:
                return f
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed by the server")
            self.buf += chunk

    def send(self, opcode, data):
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0xFE, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0xFF, n)
        self.sock.sendall(head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(data)))

    def send_text(self, text):
        self.send(0x1, text.encode())

    def recv(self, timeout=None):
        """The next text message (bytes), or None on timeout.  Raises WSClosed
        on a close frame, ConnectionError when the socket ends."""
        self.sock.settimeout(timeout)
        msg = b""
        while True:
            try:
                fin, opcode, data = self._frame()
            except socket.timeout:
                return None
            if opcode == 0x9:  # ping
                self.send(0xA, data)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                self.closed = (code, data[2:].decode("utf-8", "replace"))
                raise WSClosed(*self.closed)
            msg += data
            if fin:
                return msg

    def recv_json(self, timeout=None):
        m = self.recv(timeout)
        return None if m is None else json.loads(m)

    def close(self):
        try:
            self.send(0x8, struct.pack("!H", 1000))
        except OSError:
            pass
        self.sock.close()

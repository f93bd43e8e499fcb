"""A small WebSocket client (RFC 6455) for the integration tests.

Python standard library only: a socket, the opening handshake with its
Sec-WebSocket-Accept check, masked client frames, and frame parsing with
fragmentation and control frames.  Not a general client: enough to
subscribe to the server and to fail loudly on anything unexpected.

    ws = WsClient.connect("127.0.0.1", port, "/stream/s/ws/me?from_offset=0")
    op, payload = ws.recv()        # (OP_TEXT, b'{"offset":0,...}')
    ws.close()
"""

import base64
import hashlib
import json
import os
import socket
import struct

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HandshakeError(Exception):
    """The server refused the upgrade; status and body say why."""

    def __init__(self, status, head, body):
        super().__init__("upgrade refused: %s %r" % (status, body[:300]))
        self.status = status
        self.head = head
        self.body = body


class ProtocolError(Exception):
    pass


class Closed(Exception):
    """The server sent a close frame (code, reason) or the TCP stream ended
    (code None)."""

    def __init__(self, code, reason):
        super().__init__("closed: %r %r" % (code, reason))
        self.code = code
        self.reason = reason


class WsClient:

    def __init__(self, sock, leftover=b""):
        self.sock = sock
        self.buf = leftover
        self.closed = False

    @classmethod
    def connect(cls, host, port, path, timeout=10.0, headers=None):
        """Opens a TCP connection and upgrades it.  Raises OSError for
        connection problems, HandshakeError for a non-101 answer,
        ProtocolError for a wrong accept key."""
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            key = base64.b64encode(os.urandom(16))
            lines = ["GET %s HTTP/1.1" % path, "Host: %s:%d" % (host, port), "Upgrade: websocket",
                     "Connection: Upgrade", "Sec-WebSocket-Key: %s" % key.decode(), "Sec-WebSocket-Version: 13"]
            for k, v in (headers or {}).items():
                lines.append("%s: %s" % (k, v))
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed during the WebSocket handshake: %r" % buf[:200])
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            text = head.decode("latin-1").split("\r\n")
            status = int(text[0].split(" ")[1])
            hdrs = {}
            for line in text[1:]:
                n, _, v = line.partition(":")
                hdrs[n.strip().lower()] = v.strip()
            if status != 101:
                n = int(hdrs.get("content-length", "0"))
                while len(rest) < n:
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
                raise HandshakeError(status, hdrs, rest[:n] if n else rest)
            want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
            if hdrs.get("sec-websocket-accept") != want:
                raise ProtocolError("bad Sec-WebSocket-Accept %r (want %r)" % (hdrs.get("sec-websocket-accept"), want))
            if hdrs.get("upgrade", "").lower() != "websocket":
                raise ProtocolError("101 without Upgrade: websocket: %r" % hdrs)
            return cls(sock, rest)
        except BaseException:
            sock.close()
            raise

    # ---- frames ----------------------------------------------------------

    def send_frame(self, opcode, payload=b"", fin=True):
        """One masked frame (clients must mask, RFC 6455 5.3)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self.send_frame(OP_TEXT, text)

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed(None, "TCP connection ended")
            self.buf += chunk

    def _read_frame(self):
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        if b0 & 0x70:
            raise ProtocolError("reserved bits set without an extension: %#x" % b0)
        if b1 & 0x80:
            raise ProtocolError("the server masked a frame")
        n = b1 & 0x7F
        at = 2
        if n == 126:
            self._need(4)
            n = struct.unpack("!H", self.buf[2:4])[0]
            at = 4
        elif n == 127:
            self._need(10)
            n = struct.unpack("!Q", self.buf[2:10])[0]
            at = 10
        self._need(at + n)
        payload = self.buf[at:at + n]
        self.buf = self.buf[at + n:]
        return bool(b0 & 0x80), b0 & 0x0F, payload

    def recv(self, timeout=None):
        """The next data message as (opcode, payload bytes).  Pings are
        answered, pongs ignored.  Raises Closed on a close frame (answered)
        or the end of the stream, socket.timeout on timeout."""
        if timeout is not None:
            self.sock.settimeout(timeout)
        parts, op = [], None
        while True:
            fin, opcode, payload = self._read_frame()
            if opcode == OP_PING:
                if len(payload) > 125:
                    raise ProtocolError("ping with %d bytes" % len(payload))
                self.send_frame(OP_PONG, payload)
                continue
            if opcode == OP_PONG:
                continue
            if opcode == OP_CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                reason = payload[2:].decode("utf-8", "replace")
                try:
                    self.send_frame(OP_CLOSE, payload[:2])
                except OSError:
                    pass
                self.closed = True
                raise Closed(code, reason)
            if opcode == OP_CONT:
                if op is None:
                    raise ProtocolError("continuation frame without a message")
            elif opcode in (OP_TEXT, OP_BINARY):
                if op is not None:
                    raise ProtocolError("new message inside a fragmented one")
                op = opcode
            else:
                raise ProtocolError("unknown opcode %#x" % opcode)
            parts.append(payload)
            if fin:
                return op, b"".join(parts)

    def close(self, code=1000, reason=b""):
        """Sends a close frame (best effort) and closes the socket."""
        if not self.closed:
            try:
                self.send_frame(OP_CLOSE, struct.pack("!H", code) + reason)
            except OSError:
                pass
            self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass

    def recv_text(self, timeout=None):
        """The next data message's bytes, or None on timeout (a frame read in
        part stays buffered for the next call)."""
        try:
            return self.recv(timeout)[1]
        except socket.timeout:
            return None

    def recv_json(self, timeout=None):
        m = self.recv_text(timeout)
        return None if m is None else json.loads(m)

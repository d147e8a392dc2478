"""A GET and a WebSocket login over TLS with Python's own ssl module (OpenSSL), a client
dialtone did not write. Run by tests/tls_scorecard.rs:

    python3 wss_login.py PORT CA_FILE TLS_VERSION NAME

TLS_VERSION is 1.2 or 1.3. Prints one line per step; exits non-zero on anything unexpected.
"""

import base64
import json
import os
import socket
import ssl
import struct
import sys


def read_until(sock, marker):
    data = b""
    while marker not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"the server closed before {marker!r}: {data!r}")
        data += chunk
    return data


def read_exact(sock, count, buffered):
    while len(buffered) < count:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("the server closed in the middle of a frame")
        buffered += chunk
    return buffered[:count], buffered[count:]


def masked_frame(opcode, payload):
    mask = os.urandom(4)
    if len(payload) < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + body


def next_frame(sock, buffered):
    """The next frame's opcode and payload."""
    head, buffered = read_exact(sock, 2, buffered)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        ext, buffered = read_exact(sock, 2, buffered)
        length = struct.unpack("!H", ext)[0]
    elif length == 127:
        ext, buffered = read_exact(sock, 8, buffered)
        length = struct.unpack("!Q", ext)[0]
    payload, buffered = read_exact(sock, length, buffered)
    return opcode, payload, buffered


def next_text(sock, buffered):
    """The next text frame's payload, skipping Pings."""
    while True:
        opcode, payload, buffered = next_frame(sock, buffered)
        if opcode == 0x1:
            return payload.decode(), buffered
        if opcode == 0x8:
            raise SystemExit(f"the server closed the WebSocket: {payload!r}")


def main():
    port, ca, version, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    context = ssl.create_default_context(cafile=ca)
    pinned = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[version]
    context.minimum_version = context.maximum_version = pinned

    def connect():
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        return context.wrap_socket(raw, server_hostname="localhost")

    with connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        response = read_until(sock, b"</html>")
        status = response.split(b"\r\n", 1)[0].decode()
        print(f"GET {status} over {sock.version()}")
        if " 200 " not in status:
            raise SystemExit(1)
        # The server ends the connection with close_notify, not a bare FIN.
        sock.unwrap()

    with connect() as sock:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: localhost:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = read_until(sock, b"\r\n\r\n")
        head, buffered = response.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode()
        print(f"UPGRADE {status} over {sock.version()}")
        if " 101 " not in status:
            raise SystemExit(1)
        login = json.dumps({"type": "login", "username": name}).encode()
        sock.sendall(masked_frame(0x1, login))
        reply, buffered = next_text(sock, buffered)
        print(f"LOGIN {reply}")
        if json.loads(reply).get("success") is not True:
            raise SystemExit(1)
        # A clean goodbye: Close both ways, then TLS close_notify both ways.
        sock.sendall(masked_frame(0x8, struct.pack("!H", 1000)))
        opcode = None
        while opcode != 0x8:
            opcode, _, buffered = next_frame(sock, buffered)
        sock.unwrap()
        print("CLOSED")


main()

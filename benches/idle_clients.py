#!/usr/bin/env python3
"""Open N idle PostgreSQL sessions over TLS and hold them.

Standard library only. Speaks just enough of the wire protocol:
SSLRequest, StartupMessage, cleartext or MD5 password, one `select 1`.
Prints "ready" once every session is open and has answered the query, then
holds them until a line arrives on stdin (or --hold seconds pass), sends
Terminate on each and exits.

usage: idle_clients.py --host 127.0.0.1 --port 6432 --user bench \
           --database postgres --count 200 [--cafile ca.crt] [--hold 120]
The password comes from $PGPASSWORD.
"""

import argparse
import concurrent.futures
import hashlib
import os
import select
import socket
import ssl
import struct
import sys


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return buf


def read_message(sock):
    header = recv_exact(sock, 5)
    kind = header[:1]
    (length,) = struct.unpack("!I", header[1:])
    return kind, recv_exact(sock, length - 4)


def error_text(body):
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[part[:1]] = part[1:].decode("utf-8", "replace")
    return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')}"


def message(kind, body):
    return kind + struct.pack("!I", len(body) + 4) + body


def open_session(args, password, context):
    raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
    raw.sendall(struct.pack("!II", 8, 80877103))
    answer = recv_exact(raw, 1)
    if answer != b"S":
        raw.close()
        raise ConnectionError(f"server refused TLS (answered {answer!r})")
    sock = context.wrap_socket(raw, server_hostname=args.host)
    params = b""
    for k, v in (("user", args.user), ("database", args.database),
                 ("application_name", "idle_clients")):
        params += k.encode() + b"\0" + v.encode() + b"\0"
    body = struct.pack("!I", 196608) + params + b"\0"
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    while True:
        kind, body = read_message(sock)
        if kind == b"R":
            (code,) = struct.unpack("!I", body[:4])
            if code == 0:
                continue
            if code == 3:
                sock.sendall(message(b"p", password.encode() + b"\0"))
            elif code == 5:
                salt = body[4:8]
                inner = hashlib.md5(password.encode() + args.user.encode()).hexdigest()
                outer = hashlib.md5(inner.encode() + salt).hexdigest()
                sock.sendall(message(b"p", b"md5" + outer.encode() + b"\0"))
            else:
                raise ConnectionError(f"unsupported authentication request {code}")
        elif kind == b"E":
            raise ConnectionError(error_text(body))
        elif kind == b"Z":
            break
    sock.sendall(message(b"Q", b"select 1\0"))
    while True:
        kind, body = read_message(sock)
        if kind == b"E":
            raise ConnectionError(error_text(body))
        if kind == b"Z":
            break
    sock.settimeout(None)
    return sock


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--database", default="postgres")
    p.add_argument("--count", type=int, default=200)
    p.add_argument("--cafile", help="verify the server against this CA")
    p.add_argument("--hold", type=float, default=120.0, help="seconds to hold at most")
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args()
    password = os.environ.get("PGPASSWORD", "")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.cafile:
        context.load_verify_locations(args.cafile)
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    sessions = []
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(open_session, args, password, context)
                   for _ in range(args.count)]
        errors = []
        for f in futures:
            try:
                sessions.append(f.result())
            except Exception as e:  # noqa: BLE001 - report and fail below
                errors.append(e)
    if errors:
        print(f"idle_clients: {len(errors)} of {args.count} sessions failed: {errors[0]}",
              file=sys.stderr)
        for s in sessions:
            s.close()
        sys.exit(1)
    print("ready", flush=True)
    select.select([sys.stdin], [], [], args.hold)
    for s in sessions:
        try:
            s.sendall(message(b"X", b""))
            s.close()
        except OSError:
            pass


if __name__ == "__main__":
    main()

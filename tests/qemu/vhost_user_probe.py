#!/usr/bin/env python3
"""Control-plane probe for QEMU's cryptodev-vhost-user frontend (diagnostic tool, not CI).

Listens on a unix socket like a vhost-user crypto backend, logs every message QEMU
sends (with the fds it passes), answers the ones that need an answer, hands out
session ids for CREATE_CRYPTO_SESSION, and logs kicks on the vrings it was given.
It does NOT process requests: a guest data request stays unanswered.

Used to find out what QEMU replays when a backend restarts (tests/qemu/README.md):

    python3 tests/qemu/vhost_user_probe.py /tmp/probe.sock   # run, kill, run again

Stdlib only.
"""
import array
import os
import select
import socket
import struct
import sys
import threading
import time

NAMES = {
    1: "GET_FEATURES", 2: "SET_FEATURES", 3: "SET_OWNER", 4: "RESET_OWNER",
    5: "SET_MEM_TABLE", 6: "SET_LOG_BASE", 7: "SET_LOG_FD", 8: "SET_VRING_NUM",
    9: "SET_VRING_ADDR", 10: "SET_VRING_BASE", 11: "GET_VRING_BASE",
    12: "SET_VRING_KICK", 13: "SET_VRING_CALL", 14: "SET_VRING_ERR",
    15: "GET_PROTOCOL_FEATURES", 16: "SET_PROTOCOL_FEATURES", 17: "GET_QUEUE_NUM",
    18: "SET_VRING_ENABLE", 24: "GET_CONFIG", 25: "SET_CONFIG",
    26: "CREATE_CRYPTO_SESSION", 27: "CLOSE_CRYPTO_SESSION", 33: "GET_INFLIGHT_FD",
}
VERSION_1 = 1 << 32
PROTOCOL_FEATURES = 1 << 30           # VHOST_USER_F_PROTOCOL_FEATURES
PROTO_MQ, PROTO_CRYPTO_SESSION = 1 << 0, 1 << 7
REPLY_FLAG, VERSION = 0x4, 0x1
HDR = struct.Struct("<III")

t0 = time.monotonic()
next_session = [1]


def log(msg):
    print(f"[{time.monotonic() - t0:8.3f}] {msg}", flush=True)


def recv_msg(conn):
    fds = array.array("i")
    data, anc, _, _ = conn.recvmsg(HDR.size, socket.CMSG_SPACE(8 * 4))
    if not data:
        return None
    for level, typ, cdata in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    req, flags, size = HDR.unpack(data)
    payload = b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            return None
        payload += chunk
    return req, flags, payload, list(fds)


def reply(conn, req, payload):
    conn.sendall(HDR.pack(req, VERSION | REPLY_FLAG, len(payload)) + payload)


def watch_kick(index, fd):
    while True:
        try:
            select.select([fd], [], [])
            os.read(fd, 8)
        except OSError:
            return
        log(f"  kick on vring {index} (request left unanswered by this probe)")


def serve(conn):
    while True:
        m = recv_msg(conn)
        if m is None:
            log("connection closed by QEMU")
            return
        req, flags, p, fds = m
        name = NAMES.get(req, f"REQ_{req}")
        extra = ""
        if req in (8, 10, 18) and len(p) >= 8:
            extra = " index=%d num=%d" % struct.unpack_from("<II", p)
        elif req in (12, 13, 14) and len(p) >= 8:
            extra = " index=%d" % (struct.unpack_from("<Q", p)[0] & 0xFF)
        elif req == 5 and len(p) >= 8:
            extra = " regions=%d" % struct.unpack_from("<I", p)[0]
        elif req == 26 and len(p) >= 8:
            op = struct.unpack_from("<Q", p)[0]
            # symmetric session info right after op_code: cipher_alg, key_len, hash_alg,
            # hash_result_len, auth_key_len, add_len, op_type, direction, alg_chain_order
            # (QEMU's CryptoDevBackendSymSessionInfo: six u32, then u8 op_type, direction)
            info = struct.unpack_from("<6I2B", p, 8)
            extra = f" op_code={op} cipher_alg={info[0]} key_len={info[1]} op_type={info[6]} direction={info[7]}"
        elif req == 27 and len(p) >= 8:
            extra = " session_id=%d" % struct.unpack_from("<q", p)[0]
        log(f"<- {name} flags={flags:#x} size={len(p)} fds={len(fds)}{extra}")
        if req == 1:
            reply(conn, req, struct.pack("<Q", VERSION_1 | PROTOCOL_FEATURES))
        elif req == 15:
            reply(conn, req, struct.pack("<Q", PROTO_MQ | PROTO_CRYPTO_SESSION))
        elif req == 17:
            reply(conn, req, struct.pack("<Q", 2))
        elif req == 11:
            idx = struct.unpack_from("<I", p)[0]
            reply(conn, req, struct.pack("<II", idx, 0))
        elif req == 26:
            sid = next_session[0]
            next_session[0] += 1
            out = bytearray(p)
            struct.pack_into("<q", out, len(out) - 8, sid)
            reply(conn, req, bytes(out))
            log(f"-> session_id={sid}")
        if req == 12 and fds:
            idx = struct.unpack_from("<Q", p)[0] & 0xFF
            threading.Thread(target=watch_kick, args=(idx, fds[0]), daemon=True).start()
        elif fds and req != 12:
            for fd in fds:
                if req != 5:
                    os.close(fd)


def main():
    path = sys.argv[1]
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    log(f"listening on {path}")
    while True:
        conn, _ = srv.accept()
        log("QEMU connected")
        serve(conn)
        conn.close()


if __name__ == "__main__":
    main()

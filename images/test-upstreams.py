"""images/test.sh's upstreams, on loopback inside its network namespace.

HTTP on 127.0.0.1:8080 and HTTPS on 127.0.0.1:8443 (PKI_DIR/server.crt) answer any POST with 200;
a DNS server on 127.0.0.1:53 answers an A query for NAME with 127.0.0.1, an AAAA query for it
with no record, and NXDOMAIN for anything else.

Usage: test-upstreams.py PKI_DIR NAME
"""
import http.server
import os
import socket
import ssl
import struct
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b"upstream ok\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_http(port, tls=None):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if tls:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def serve_dns(name):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 53))
    while True:
        query, peer = sock.recvfrom(512)
        qid, flags = struct.unpack(">HH", query[:4])
        i, labels = 12, []
        while query[i]:
            labels.append(query[i + 1 : i + 1 + query[i]].decode().lower())
            i += 1 + query[i]
        qtype = struct.unpack(">H", query[i + 1 : i + 3])[0]
        question = query[12 : i + 5]
        known = ".".join(labels) == name
        answer = b""
        if known and qtype == 1:
            answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton("127.0.0.1")
        # A response, recursion available, RD copied, NOERROR or NXDOMAIN.
        flags = 0x8180 | (flags & 0x0100) | (0 if known else 3)
        header = struct.pack(">HHHHHH", qid, flags, 1, 1 if answer else 0, 0, 0)
        sock.sendto(header + question + answer, peer)


def main():
    pki, name = sys.argv[1], sys.argv[2].lower().rstrip(".")
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(os.path.join(pki, "server.crt"), os.path.join(pki, "server.key"))
    serve_http(8080)
    serve_http(8443, tls)
    print("upstreams: http 8080, https 8443, dns 53 for %s" % name, flush=True)
    serve_dns(name)


if __name__ == "__main__":
    main()

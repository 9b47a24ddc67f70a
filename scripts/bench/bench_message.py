#!/usr/bin/env python3
"""Prepared messages for the auth, spam and milter scenarios of bench.py (smtp-source -F).

  bench_message.py make --size N --key KEY.pem --domain D --selector S --plain OUT --signed OUT
      writes one message of about N body bytes (From: bench@client.test, plain text) twice:
      as it is, and with a dkimpy DKIM-Signature (rsa-sha256, relaxed/relaxed, d=D, s=S).
      The files have LF line ends: smtp-source -F sends each line with CRLF and dot-stuffs.
  bench_message.py record --key KEY.pem
      prints the key's DKIM TXT record as zone-file strings of at most 250 characters.
  bench_message.py verify --key KEY.pem --domain D --selector S FILE
      verifies FILE's first DKIM-Signature against the key (exit 0 pass, 1 fail), as a
      verifier that fetched the record would.

Stdlib and dkimpy (Debian python3-dkim) only.
"""
from __future__ import annotations

import argparse
import base64
import random
import subprocess
import sys

WORDS = ("the quarterly report is attached and the numbers for the northern region look "
         "better than we expected given the late start of the season please review the "
         "figures before our meeting on thursday and let me know if anything needs another "
         "look we also need to confirm the venue for the workshop and the list of speakers "
         "who have agreed to present their results to the team").split()


def build(size: int) -> bytes:
    """The unsigned message, CRLF line ends, a body of about `size` bytes in 72-column prose."""
    rng = random.Random(5120)
    head = ("From: Bench Sender <bench@client.test>\r\n"
            "To: Bench Recipient <bench@example.test>\r\n"
            "Subject: Quarterly figures and the workshop\r\n"
            "Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n"
            "Message-ID: <bench-message@client.test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n"
            "\r\n")
    lines: list[str] = ["Hello,", ""]
    total = sum(len(x) + 2 for x in lines)
    line = ""
    while total < size:
        word = rng.choice(WORDS)
        if len(line) + len(word) + 1 > 72:
            lines.append(line + ".")
            total += len(line) + 3
            line = ""
            if rng.random() < 0.15:
                lines.append("")
                total += 2
        line = f"{line} {word}" if line else word.capitalize()
    lines += ["", "Regards,", "Bench", ""]
    return (head + "\r\n".join(lines)).encode()


def private_pkcs1(path: str) -> bytes:
    pem = open(path, "rb").read()
    if b"BEGIN RSA PRIVATE KEY" in pem:
        return pem
    return subprocess.run(["openssl", "rsa", "-in", path, "-traditional"], capture_output=True,
                          check=True).stdout


def record(path: str) -> str:
    der = subprocess.run(["openssl", "rsa", "-in", path, "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def lf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--size", type=int, required=True)
    mk.add_argument("--key", required=True)
    mk.add_argument("--domain", required=True)
    mk.add_argument("--selector", required=True)
    mk.add_argument("--plain", required=True)
    mk.add_argument("--signed", required=True)
    rc = sub.add_parser("record")
    rc.add_argument("--key", required=True)
    vf = sub.add_parser("verify")
    vf.add_argument("--key", required=True)
    vf.add_argument("--domain", required=True)
    vf.add_argument("--selector", required=True)
    vf.add_argument("file")
    a = ap.parse_args()

    if a.cmd == "record":
        txt = record(a.key)
        print(" ".join(f'"{txt[i:i + 250]}"' for i in range(0, len(txt), 250)))
        return 0

    import dkim  # python3-dkim; only these two commands need it
    if a.cmd == "make":
        msg = build(a.size)
        sig = dkim.sign(msg, a.selector.encode(), a.domain.encode(), private_pkcs1(a.key),
                        canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=b"rsa-sha256")
        signed = sig + msg
        name = f"{a.selector}._domainkey.{a.domain}".lower()
        txt = record(a.key).encode()
        ok = dkim.verify(signed, dnsfunc=lambda n, timeout=5: txt if n.decode().rstrip(".").lower() == name else None)
        if not ok:
            print("dkimpy cannot verify its own signature", file=sys.stderr)
            return 1
        with open(a.plain, "wb") as f:
            f.write(lf(msg))
        with open(a.signed, "wb") as f:
            f.write(lf(signed))
        return 0

    # verify: the delivered file may have LF line ends (maildir); DKIM is computed over CRLF
    data = open(a.file, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    txt = record(a.key).encode()
    name = f"{a.selector}._domainkey.{a.domain}".lower()
    ok = dkim.verify(data, dnsfunc=lambda n, timeout=5: txt if n.decode().rstrip(".").lower() == name else None)
    print("pass" if ok else "fail")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

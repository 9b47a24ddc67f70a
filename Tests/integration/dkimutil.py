"""Helpers shared by the DKIM and DMARC integration tests: keys made by `sluice dkim keygen`
and opendkim-genkey, signing and verifying with dkimpy (Debian python3-dkim) and the opendkim
filter's test mode, and reading the gateway's Authentication-Results field."""
from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import dkim
import dkim.util

from conftest import HOSTNAME, header_values, run_cli, strip_comments


# -- keys ------------------------------------------------------------------------------------------

class Key:
    """A key pair: the private key file for the gateway, the TXT record to publish, and the
    private key in the form dkimpy wants (PKCS#1 PEM for RSA, base64 seed for Ed25519)."""

    def __init__(self, domain: str, selector: str, algorithm: str, path: Path, record: str):
        self.domain = domain
        self.selector = selector
        self.algorithm = algorithm          # "rsa" | "ed25519"
        self.path = path
        self.record = record

    @property
    def dns_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"

    @property
    def sign_alg(self) -> str:
        return "ed25519-sha256" if self.algorithm == "ed25519" else "rsa-sha256"

    def stage_key(self) -> dict:
        return {"domain": self.domain, "selector": self.selector, "key": str(self.path),
                "algorithm": self.sign_alg}

    def dkimpy_private(self) -> bytes:
        pem = self.path.read_bytes()
        if self.algorithm == "ed25519":
            der = base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))
            return base64.b64encode(der[-32:])
        if b"BEGIN RSA PRIVATE KEY" in pem:
            return pem
        out = subprocess.run(["openssl", "rsa", "-in", str(self.path), "-traditional"],
                             capture_output=True, check=True)
        return out.stdout


def txt_strings(text: str) -> list[str]:
    """The character-strings of a zone-file TXT value: `"a"` or `( "a" "b" )`."""
    return re.findall(r'"((?:[^"\\]|\\.)*)"', text)


def keygen(directory: Path, domain: str, selector: str, algorithm: str = "rsa",
           bits: int | None = None) -> Key:
    """`sluice dkim keygen`; checks the key file mode and the printed record's shape."""
    path = directory / f"{domain}.{selector}.pem"
    args = ["dkim", "keygen", "--domain", domain, "--selector", selector, "--algorithm", algorithm,
            "--out", str(path)]
    if bits:
        args += ["--bits", str(bits)]
    r = run_cli(*args, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    m = re.search(rf"^{re.escape(selector)}\._domainkey\.{re.escape(domain)}\. IN TXT (.+)$", out, re.M)
    assert m, f"no TXT line in keygen output:\n{out}"
    strings = txt_strings(m.group(1))
    assert strings and all(len(s) <= 255 for s in strings), m.group(1)
    assert (len(strings) > 1) == m.group(1).startswith("("), m.group(1)
    assert os.stat(path).st_mode & 0o777 == 0o600
    return Key(domain, selector, algorithm, path, "".join(strings))


def opendkim_genkey(directory: Path, domain: str, selector: str) -> Key:
    """A key from opendkim-genkey (PKCS#8 PEM in SELECTOR.private, the record in SELECTOR.txt)."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["opendkim-genkey", "-b", "2048", "-d", domain, "-s", selector, "-D", str(directory)],
                   check=True, capture_output=True)
    record = "".join(txt_strings((directory / f"{selector}.txt").read_text()))
    return Key(domain, selector, "rsa", directory / f"{selector}.private", record)


def zone_for(*keys: Key) -> dict:
    return {k.dns_name: [("TXT", k.record)] for k in keys}


# -- dkimpy ----------------------------------------------------------------------------------------

def crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dnsfunc(*keys: Key, extra: dict | None = None):
    records = {k.dns_name.lower(): k.record.encode() for k in keys}
    records.update({n.lower(): v.encode() for n, v in (extra or {}).items()})

    def lookup(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode()
        return records.get(name.rstrip(".").lower())
    return lookup


def dkimpy_sign(message: bytes, key: Key, canon: str = "relaxed/relaxed", headers=None,
                algorithm: str | None = None) -> bytes:
    """The message with a dkimpy DKIM-Signature prepended."""
    h, b = canon.split("/")
    sig = dkim.sign(crlf(message), key.selector.encode(), key.domain.encode(), key.dkimpy_private(),
                    canonicalize=(h.encode(), b.encode()),
                    signature_algorithm=(algorithm or key.sign_alg).encode(),
                    include_headers=[x.encode() for x in headers] if headers else None)
    return sig + crlf(message)


def dkimpy_verify_all(message: bytes, *keys: Key) -> list[bool]:
    """dkimpy's verdict for every DKIM-Signature of `message`, top first."""
    msg = crlf(message)
    d = dkim.DKIM(msg)
    n = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
    return [dkim.DKIM(msg).verify(idx=i, dnsfunc=dnsfunc(*keys)) for i in range(n)]


def signature_tags(message: bytes) -> list[dict[str, str]]:
    """The tags of every DKIM-Signature field, top first (values with folding white space removed)."""
    out = []
    for value in header_values(message, "DKIM-Signature"):
        tags = dkim.util.parse_tag_value(value.encode())
        out.append({k.decode(): re.sub(r"\s+", "", v.decode()) for k, v in tags.items()})
    return out


# -- opendkim (the filter's test mode) -------------------------------------------------------------

def opendkim_sign(message: bytes, key: Key, workdir: Path, canon: str = "relaxed/relaxed") -> bytes:
    """The message signed by the opendkim filter in test mode (`opendkim -t`), which prints the
    header it would add as `### INSHEADER: idx=0 hname='DKIM-Signature' hvalue='...'`."""
    workdir.mkdir(parents=True, exist_ok=True)
    msg = workdir / "unsigned.eml"
    msg.write_bytes(crlf(message))
    conf = workdir / "opendkim.conf"
    # RequireSafeKeys: the key lives under /tmp, which opendkim otherwise refuses.
    conf.write_text(f"RequireSafeKeys no\nMode s\nDomain {key.domain}\nSelector {key.selector}\n"
                    f"KeyFile {key.path}\nCanonicalization {canon}\nSignatureAlgorithm rsa-sha256\n")
    r = subprocess.run(["opendkim", "-x", str(conf), "-t", str(msg), "-vv"], capture_output=True,
                       timeout=30, cwd=str(workdir))
    m = re.search(rb"INSHEADER: idx=\d+ hname='DKIM-Signature' hvalue='(.*?)'\n", r.stdout, re.S)
    assert m, f"opendkim did not sign (rc {r.returncode}):\n{r.stdout.decode()}\n{r.stderr.decode()}"
    value = m.group(1).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return b"DKIM-Signature: " + value + b"\r\n" + crlf(message)


# -- Authentication-Results ------------------------------------------------------------------------



def our_results(content: bytes, method: str | None = None) -> list[dict]:
    """The resinfos of the gateway's own Authentication-Results field(s) ({"method", "result",
    "reason" (the comment after the result, if any), properties...}), optionally of one method."""
    infos = []
    for value in header_values(content, "Authentication-Results"):
        parts = [p.strip() for p in value.split(";")]
        if not parts or strip_comments(parts[0]).split()[:1] != [HOSTNAME]:
            continue
        for part in parts[1:]:
            m = re.match(r"([\w.-]+)=([\w-]+)\s*(?:\((.*?)\))?\s*(.*)$", part, re.S)
            if not m:
                continue
            info = {"method": m.group(1).lower(), "result": m.group(2).lower(), "reason": m.group(3)}
            for tok in re.findall(r'[\w.-]+=(?:"(?:[^"\\]|\\.)*"|\S+)', m.group(4)):
                k, _, v = tok.partition("=")
                info[k.lower()] = v
            infos.append(info)
    return [i for i in infos if method is None or i["method"] == method]

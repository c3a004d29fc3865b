"""Test PKI made with the ``openssl`` command line (EC P-256 keys, fast to generate).

    pki = Pki(workdir).build()
    pki.ca                      # trusted CA: .cert .key
    pki.server                  # server cert for 127.0.0.1 / localhost (SAN IP + DNS), signed by ca
    pki.server2                 # a second server cert (same CA, other key) for the hot-reload test
    pki.client("dev-1")         # client cert with CN=dev-1 signed by ca (made once, cached)
    pki.rogue_client            # client cert (CN=rogue) signed by an untrusted CA
    fingerprint(path)           # SHA-256 of the DER certificate, "AB:CD:..." (openssl's form)

Every ``Cert`` has ``.cert`` and ``.key`` (paths) and ``.cn``.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

DAYS = "30"


@dataclass
class Cert:
    cn: str
    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        return ssl.PEM_cert_to_DER_cert(self.cert.read_text())

    @property
    def sha256(self) -> str:
        """Lowercase hex SHA-256 of the DER certificate (computed in Python)."""
        return hashlib.sha256(self.der).hexdigest()


def _run(*args: str) -> str:
    res = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed:\n{res.stderr}")
    return res.stdout


def fingerprint(cert_path: Path | str) -> str:
    """``openssl x509 -fingerprint -sha256``: 'AA:BB:...' (upper case, colons)."""
    out = _run("x509", "-in", str(cert_path), "-noout", "-fingerprint", "-sha256")
    # "sha256 Fingerprint=AA:BB:..." (the prefix's case differs between versions)
    return out.strip().split("=", 1)[1]


def _key(path: Path) -> None:
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(path))


class Pki:
    def __init__(self, workdir: Path | str):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._clients: dict[str, Cert] = {}
        self._serial = 1000

    # -- building blocks -----------------------------------------------------
    def _ca(self, name: str, cn: str) -> Cert:
        key, cert = self.dir / f"{name}.key", self.dir / f"{name}.pem"
        _key(key)
        _run("req", "-x509", "-new", "-key", str(key), "-out", str(cert), "-days", DAYS,
             "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-addext", "subjectKeyIdentifier=hash")
        return Cert(cn, cert, key)

    def _leaf(self, ca: Cert, name: str, cn: str, ext: list[str]) -> Cert:
        key, csr, cert = (self.dir / f"{name}.key", self.dir / f"{name}.csr",
                          self.dir / f"{name}.pem")
        extfile = self.dir / f"{name}.ext"
        extfile.write_text("\n".join(["basicConstraints=critical,CA:FALSE",
                                      "keyUsage=critical,digitalSignature",
                                      "authorityKeyIdentifier=keyid",
                                      "subjectKeyIdentifier=hash", *ext]) + "\n")
        _key(key)
        _run("req", "-new", "-key", str(key), "-out", str(csr), "-subj", f"/CN={cn}")
        self._serial += 1
        _run("x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key),
             "-set_serial", str(self._serial), "-out", str(cert), "-days", DAYS,
             "-sha256", "-extfile", str(extfile))
        return Cert(cn, cert, key)

    # -- the set used by the suite -------------------------------------------
    def build(self) -> "Pki":
        self.ca = self._ca("ca", "cmq-test-ca")
        self.rogue_ca = self._ca("rogue-ca", "cmq-rogue-ca")
        server_ext = ["extendedKeyUsage=serverAuth",
                      "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        self.server = self._leaf(self.ca, "server", "cmq-test-server", server_ext)
        self.server2 = self._leaf(self.ca, "server2", "cmq-test-server-2", server_ext)
        self.rogue_client = self._leaf(self.rogue_ca, "rogue-client", "rogue",
                                       ["extendedKeyUsage=clientAuth"])
        return self

    def client(self, cn: str, san: str | None = None) -> Cert:
        """A client certificate with subject CN=``cn`` (and optional SAN, e.g.
        ``"DNS:dev.example"``), signed by the trusted CA. Cached per (cn, san)."""
        k = f"{cn}|{san or ''}"
        if k not in self._clients:
            name = f"client-{len(self._clients)}"
            ext = ["extendedKeyUsage=clientAuth"]
            if san:
                ext.append(f"subjectAltName={san}")
            self._clients[k] = self._leaf(self.ca, name, cn, ext)
        return self._clients[k]

"""TLS for the benchmark: one ECDSA P-256 and one RSA-2048 certificate (self-signed, made with
the openssl CLI once per run), which every candidate terminates on two extra listeners in front
of the same web backends. wrk does not verify certificates, so no CA is needed."""

import subprocess
from pathlib import Path

from .common import BenchError

KINDS = {
    "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    "rsa": ["-newkey", "rsa:2048"],
}


class Cert:
    def __init__(self, d, kind):
        self.cert, self.key, self.combined = d / f"{kind}.pem", d / f"{kind}.key", d / f"{kind}-combined.pem"


def bench_certs(tmp):
    """{"ecdsa": Cert, "rsa": Cert} under tmp/certs, made on first use."""
    d = Path(tmp) / "certs"
    certs = {kind: Cert(d, kind) for kind in KINDS}
    if all(c.combined.exists() for c in certs.values()):
        return certs
    d.mkdir(exist_ok=True)
    for kind, newkey in KINDS.items():
        c = certs[kind]
        argv = ["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(c.key), "-out", str(c.cert)]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"openssl could not make the {kind} bench certificate:\n{r.stderr}")
        # HAProxy's `crt` takes the certificate and its key in one file.
        c.combined.write_text(c.cert.read_text() + c.key.read_text())
    return certs

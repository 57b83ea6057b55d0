"""Throwaway X.509 material for TLS tests, made with the openssl command line: a CA, and
certificates it signs for a server (SAN 127.0.0.1) or a client (its CN a principal)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Issued:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", cwd=directory,
    )  # fmt: skip
    return Issued(directory / f"{name}.pem", directory / f"{name}.key")


def issue(directory: Path, ca: Issued, cn: str, *, server: bool = False) -> Issued:
    """A certificate for CN=cn signed by ca (a server one also names 127.0.0.1)."""
    stem = f"{ca.cert.stem}-{cn}"
    extensions = directory / f"{stem}.ext"
    usage = "serverAuth" if server else "clientAuth"
    extensions.write_text(
        ("subjectAltName=IP:127.0.0.1\n" if server else "") + f"extendedKeyUsage={usage}\n"
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
        "-keyout", f"{stem}.key", "-out", f"{stem}.csr", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{stem}.csr", "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-days", "1", "-extfile", str(extensions), "-out", f"{stem}.pem",
        cwd=directory,
    )  # fmt: skip
    return Issued(directory / f"{stem}.pem", directory / f"{stem}.key")

"""Get this Vast instance's TLS certificate signed by Vast (for USE_SSL=true).

The PyWorker framework serves HTTPS with /etc/instance.crt and /etc/instance.key when
USE_SSL is true; Vast's console signs a CSR for the instance (by CONTAINER_ID), so the
autoscaler and clients trust it. This makes the key and CSR with `cryptography` (already
in the worker's environment, pinned by the framework) instead of needing openssl and
curl in the image.

    python vast_cert.py --instance-id ID [--out-dir /etc] [--sign-url URL]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SIGN_URL = "https://console.vast.ai/api/v0/sign_cert/"


def make_key_and_csr() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, "pyworker.vast.ai"),
        ]))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("0.0.0.0"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def sign(csr: bytes, instance_id: str, sign_url: str, timeout_s: float) -> bytes:
    req = urllib.request.Request(f"{sign_url}?instance_id={instance_id}", data=csr, method="POST",
                                 headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        body = r.read()
    if b"BEGIN CERTIFICATE" not in body:
        raise ValueError(f"the signing service answered something that is not a certificate ({len(body)} bytes)")
    return body


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instance-id", required=True)
    p.add_argument("--out-dir", type=Path, default=Path("/etc"))
    p.add_argument("--sign-url", default=os.environ.get("VAST_SIGN_CERT_URL", SIGN_URL))
    p.add_argument("--tries", type=int, default=5)
    p.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)

    key, csr = make_key_and_csr()
    last: Exception | None = None
    for attempt in range(args.tries):
        try:
            cert = sign(csr, args.instance_id, args.sign_url, args.timeout)
            break
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = exc
            print(f"vast_cert: signing failed ({exc}); try {attempt + 1}/{args.tries}", file=sys.stderr)
            time.sleep(min(2**attempt, 10))
    else:
        print(f"vast_cert: giving up: {last}", file=sys.stderr)
        return 1
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _write(args.out_dir / "instance.key", key, 0o600)
    _write(args.out_dir / "instance.csr", csr, 0o644)
    _write(args.out_dir / "instance.crt", cert, 0o644)
    print(f"vast_cert: wrote {args.out_dir}/instance.crt", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

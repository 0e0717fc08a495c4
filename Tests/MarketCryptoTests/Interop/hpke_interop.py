"""An independent implementation of the sealed format (docs/FORMATS.md), built on Python's
`cryptography` package: its HPKE (RFC 9180) for the wrapped stream key and its AES-GCM for the
chunks. Used by the interop test to prove the format is standard HPKE plus a documented stream.

    hpke_interop.py decrypt PRIVATE_KEY_B64 SEALED_FILE OUTPUT_FILE
    hpke_interop.py encrypt PUBLIC_KEY_B64 PLAINTEXT_FILE SEALED_FILE [CHUNK_EXPONENT]
"""
import base64
import hashlib
import os
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
PURPOSES = {1: b"file", 2: b"payload", 3: b"result"}


def nonce(counter, final):
    return counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def info_for(prefix):
    return b"claude-max-market/seal/v1/" + PURPOSES[prefix[6]] + b"\x00" + prefix


def decrypt(private_b64, sealed_path, output_path):
    key = X25519PrivateKey.from_private_bytes(base64.b64decode(private_b64))
    data = open(sealed_path, "rb").read()
    assert data[:4] == b"CMMS" and data[4] == 1 and data[5] == 1, "not a version 1 hpke-x25519 file"
    prefix = data[:16]
    (length,) = struct.unpack(">H", data[16:18])
    header = data[: 18 + length]
    stream_key = SUITE.decrypt(data[18 : 18 + length], key, info_for(prefix))
    chunk = (1 << data[7]) + 16
    body = data[18 + length :]
    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]
    out = b""
    for index, sealed in enumerate(chunks):
        out += AESGCM(stream_key).decrypt(nonce(index, index == len(chunks) - 1), sealed, header)
    open(output_path, "wb").write(out)


def encrypt(public_b64, plaintext_path, sealed_path, exponent=16):
    raw = base64.b64decode(public_b64)
    public = X25519PublicKey.from_public_bytes(raw)
    key_id = hashlib.sha256(b"claude-max-market/key-id/v1" + b"\x01" + raw).digest()[:8]
    prefix = b"CMMS" + bytes([1, 1, 1, exponent]) + key_id
    stream_key = os.urandom(32)
    wrapped = SUITE.encrypt(stream_key, public, info_for(prefix))
    header = prefix + struct.pack(">H", len(wrapped)) + wrapped
    plaintext = open(plaintext_path, "rb").read()
    size = 1 << exponent
    pieces = [plaintext[i : i + size] for i in range(0, len(plaintext), size)] or [b""]
    out = header
    for index, piece in enumerate(pieces):
        out += AESGCM(stream_key).encrypt(nonce(index, index == len(pieces) - 1), piece, header)
    open(sealed_path, "wb").write(out)


if __name__ == "__main__":
    if sys.argv[1] == "decrypt":
        decrypt(*sys.argv[2:5])
    else:
        encrypt(sys.argv[2], sys.argv[3], sys.argv[4], *(int(x) for x in sys.argv[5:6]))

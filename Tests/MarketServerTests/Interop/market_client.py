"""An independent market client, written from docs/PROTOCOL.md and docs/FORMATS.md alone.

Runs one full lifecycle between a requester and a provider against a real `market serve`, with
payload, event and result sealed end to end (HPKE X25519 / HKDF-SHA256 / AES-256-GCM, single
shot, from Python's `cryptography`), every relayed frame's signature checked against the other
party's key document, and a few frames the market must refuse. Prints LIFECYCLE OK on success.

    market_client.py URL BINARY DB HOME
"""

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid

import websockets
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw
SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
INFO = b"claude-max-market python interop"
MICRO = 1_000_000


def b64(data):
    return base64.b64encode(data).decode()


def canonical(domain, fields):
    out = domain.encode()
    for field in fields:
        data = field.encode()
        out += len(data).to_bytes(8, "big") + data
    return out


def peer_id(public_raw):
    return base64.b32encode(hashlib.sha256(public_raw).digest()[:20]).decode().lower().rstrip("=")


def compact(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Peer:
    def __init__(self, name):
        self.name = name
        self.signing = Ed25519PrivateKey.generate()
        self.public_raw = self.signing.public_key().public_bytes(*RAW)
        self.id = peer_id(self.public_raw)
        self.sealing = X25519PrivateKey.generate()
        rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
        keys = {
            "hpke-x25519": b64(self.sealing.public_key().public_bytes(*RAW)),
            # This client only receives in hpke-x25519; the document still names every suite.
            "hpke-xwing": b64(os.urandom(1216)),
            "rsa-oaep-2048": b64(
                rsa_public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            ),
        }
        created = int(time.time() * 1000)
        document = {
            "format": "claude-max-market-public-key",
            "version": 1,
            "peerId": self.id,
            "signingKey": b64(self.public_raw),
            "sealingKeys": keys,
            "created": created,
        }
        fields = [document["format"], "1", self.id, document["signingKey"], str(created)]
        for name in sorted(keys):
            fields += [name, keys[name]]
        document["signature"] = b64(self.signing.sign(canonical("claude-max-market/public-key/v1\0", fields)))
        self.document = compact(document)

    def envelope(self, type_, body, id_=None, ts=None):
        envelope = {
            "v": 1,
            "type": type_,
            "id": id_ or str(uuid.uuid4()),
            "from": self.id,
            "ts": ts if ts is not None else int(time.time() * 1000),
            "nonce": b64(os.urandom(16)),
            "body": compact(body),
        }
        fields = [str(envelope["v"]), type_, envelope["id"], self.id, str(envelope["ts"]), envelope["nonce"], envelope["body"]]
        envelope["sig"] = b64(self.signing.sign(canonical("claude-max-market/envelope/v1\0", fields)))
        return envelope


def verify_document(text, expected_peer):
    """The other party's key document: its peer id, its signature; returns (signing key, x25519 key)."""
    document = json.loads(text)
    signing_raw = base64.b64decode(document["signingKey"])
    assert peer_id(signing_raw) == document["peerId"] == expected_peer, "the key document is not the peer's"
    fields = [document["format"], str(document["version"]), document["peerId"], document["signingKey"], str(document["created"])]
    for name in sorted(document["sealingKeys"]):
        fields += [name, document["sealingKeys"][name]]
    key = Ed25519PublicKey.from_public_bytes(signing_raw)
    key.verify(base64.b64decode(document["signature"]), canonical("claude-max-market/public-key/v1\0", fields))
    return key, X25519PublicKey.from_public_bytes(base64.b64decode(document["sealingKeys"]["hpke-x25519"]))


def verify_envelope(envelope, key):
    fields = [str(envelope["v"]), envelope["type"], envelope["id"], envelope["from"], str(envelope["ts"]), envelope["nonce"], envelope["body"]]
    key.verify(base64.b64decode(envelope["sig"]), canonical("claude-max-market/envelope/v1\0", fields))


class Connection:
    def __init__(self, socket, peer):
        self.socket = socket
        self.peer = peer
        self.frames = []
        self.arrived = asyncio.Condition()
        self.reader = asyncio.create_task(self.read())

    async def read(self):
        async for text in self.socket:
            async with self.arrived:
                self.frames.append(json.loads(text))
                self.arrived.notify_all()

    async def next(self, match, timeout=10):
        async def wait():
            async with self.arrived:
                while True:
                    for index, frame in enumerate(self.frames):
                        if match(frame):
                            return self.frames.pop(index)
                    await self.arrived.wait()

        return await asyncio.wait_for(wait(), timeout)

    async def send_raw(self, envelope):
        await self.socket.send(compact(envelope))

    async def answer(self, ref):
        return await self.next(lambda f: f["type"] in ("ack", "error", "pong") and json.loads(f["body"]).get("ref") == ref)

    async def request(self, type_, body):
        envelope = self.peer.envelope(type_, body)
        await self.send_raw(envelope)
        answer = await self.answer(envelope["id"])
        return answer["type"], json.loads(answer["body"])

    async def ok(self, type_, body):
        kind, body = await self.request(type_, body)
        assert kind == "ack", f"{type_} refused: {body}"
        return body

    async def of_type(self, type_, task):
        frame = await self.next(lambda f: f["type"] == type_ and json.loads(f["body"]).get("taskId") == task)
        return frame, json.loads(frame["body"])

    async def handshake(self):
        await self.send_raw(self.peer.envelope("hello", {"keyDocument": self.peer.document}))
        challenge = await self.next(lambda f: f["type"] == "challenge")
        nonce = json.loads(challenge["body"])["nonce"]
        kind, body = await self.request("auth", {"challenge": nonce})
        assert kind == "ack", f"auth refused: {body}"


async def connect(url, peer):
    socket = await websockets.connect(url, max_size=4 << 20)
    connection = Connection(socket, peer)
    await connection.handshake()
    return connection


async def main(url, binary, db, home):
    requester, provider = Peer("requester"), Peer("provider")
    environment = dict(os.environ, CMM_HOME=home)
    subprocess.run([binary, "market", "mint", "--db", db, "--to", requester.id, "--amount", "10"], check=True, env=environment)

    r = await connect(url, requester)
    p = await connect(url, provider)
    await p.ok("offer.advertise", {"price": 3 * MICRO, "slots": 1})
    task = "py-" + uuid.uuid4().hex[:12]
    posted = await r.ok("task.post", {"taskId": task, "maxPrice": 5 * MICRO, "timeoutSeconds": 60})
    assert posted["state"] == "assigned", posted

    # Each side checks the other's key document before sealing to it.
    _, assigned = await r.of_type("task.assigned", task)
    assert assigned["provider"] == provider.id and assigned["price"] == 3 * MICRO
    provider_key, provider_sealing = verify_document(assigned["providerKeyDocument"], provider.id)
    _, assigned_p = await p.of_type("task.assigned", task)
    requester_key, requester_sealing = verify_document(assigned_p["requesterKeyDocument"], requester.id)

    prompt = b"Summarise the protocol in one line."
    await r.ok("payload.deliver", {"taskId": task, "sealed": b64(SUITE.encrypt(prompt, provider_sealing, INFO))})
    frame, body = await p.of_type("payload.deliver", task)
    verify_envelope(frame, requester_key)
    assert SUITE.decrypt(base64.b64decode(body["sealed"]), provider.sealing, INFO) == prompt

    await p.ok("job.approved", {"taskId": task})
    event = b'{"type":"assistant","text":"working"}'
    await p.ok("job.event", {"taskId": task, "seq": 0, "sealed": b64(SUITE.encrypt(event, requester_sealing, INFO))})
    result = b"One signed envelope per frame; money moves in the same transaction."
    await p.ok(
        "job.result",
        {
            "taskId": task,
            "sealed": b64(SUITE.encrypt(result, requester_sealing, INFO)),
            "resultHash": hashlib.sha256(result).hexdigest(),
            "usage": {"inputTokens": 12, "outputTokens": 34},
        },
    )
    frame, body = await r.of_type("job.event", task)
    verify_envelope(frame, provider_key)
    assert SUITE.decrypt(base64.b64decode(body["sealed"]), requester.sealing, INFO) == event
    frame, body = await r.of_type("job.result", task)
    verify_envelope(frame, provider_key)
    opened = SUITE.decrypt(base64.b64decode(body["sealed"]), requester.sealing, INFO)
    assert hashlib.sha256(opened).hexdigest() == body["resultHash"], "the result does not match its hash"

    accepted = await r.ok("job.accept", {"taskId": task})
    assert accepted["state"] == "settled", accepted
    _, settlement = await p.of_type("settlement", task)
    kinds = sorted(row["kind"] for row in settlement["movements"])
    assert settlement["state"] == "settled" and "release" in kinds, settlement

    # Frames the market must refuse, each by its code, with the connection kept.
    replay = requester.envelope("ping", {})
    await r.send_raw(replay)
    await r.answer(replay["id"])
    await r.send_raw(replay)
    refused = json.loads((await r.answer(replay["id"]))["body"])
    assert refused["code"] == "replayed_nonce", refused
    tampered = requester.envelope("task.post", {"taskId": "t2", "maxPrice": MICRO})
    tampered["body"] = compact({"taskId": "t2", "maxPrice": 2 * MICRO})
    await r.send_raw(tampered)
    assert json.loads((await r.answer(tampered["id"]))["body"])["code"] == "bad_signature"
    stale = requester.envelope("ping", {}, ts=int(time.time() * 1000) - 10 * 60 * 1000)
    await r.send_raw(stale)
    assert json.loads((await r.answer(stale["id"]))["body"])["code"] == "stale_timestamp"
    kind, body = await r.request("task.post", {"taskId": "t3", "maxPrice": 100 * MICRO})
    assert kind == "error" and body["code"] == "insufficient_funds", body

    await r.socket.close()
    await p.socket.close()
    print("LIFECYCLE OK", task)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))

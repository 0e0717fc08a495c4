#!/usr/bin/env python3
"""A hostile market: a loopback stand-in in front of a real market server.

Every participant that connects is relayed to the real market (so its jobs really run and the
real books move), and every frame the market sends it comes with mutated frames of every kind:
bodies with numbers past Int64, negative or 1e300, strings of control characters, terminal
escapes and bidi overrides, wrong types, missing and unknown fields; envelopes of another type,
another id, another task; truncated, non-JSON and binary frames, frames replayed from other
connections. Once `--mutations` frames have been sent it relays cleanly, so that what was
started can finish and the books can be checked.

Used by the fault suite's "hostile market" scenario (`scripts/fuzz.sh --target market`). Writes
`{"port": N}` to --port-file once it listens, and its counts to --stats after every hundred
mutated frames and when it is stopped (SIGTERM).
"""
import argparse
import asyncio
import json
import os
import random
import signal
import sys
import urllib.error
import urllib.request

import websockets
from websockets.datastructures import Headers
from websockets.http11 import Response

TYPES = [
    "hello", "challenge", "auth", "offer.advertise", "offer.withdraw", "task.post", "task.cancel",
    "bid.place", "task.assigned", "payload.deliver", "job.approved", "job.rejected", "job.event",
    "job.result", "job.accept", "job.dispute", "job.failed", "job.handback", "blob.chunk", "settlement",
    "heartbeat", "task.open", "ack", "ping", "pong", "error", "no.such.type", "",
]

HOSTILE_VALUES = [
    2**63 - 1, -(2**63), 2**64, 1e300, -1e300, -1, 0, 1, 2**31, -(2**31) - 1, 0.5,
    "", " ", "x" * 70000, "\x1b]52;c;ZXZpbA==\x07", "\x1b[2J\x1b[H", "\u009b31m", "\u202egnp.exe",
    "\x00\x01\x7f", "../../../etc/passwd", "/etc/shadow", "sha256:" + "0" * 64, "A" * 4096 + "==",
    "not base64 !!", "00000000-0000-0000-0000-000000000000", "\ud7ff\ue000\U0010ffff",
    None, True, False, [], {}, [1, 2, 3], {"nested": {"deeper": [None]}},
]

RAW = [
    "", "null", "[]", "{}", "\"just a string\"", "{" * 5000, "[" * 100000 + "]" * 100000,
    "{\"v\":1}", "\x00" * 64, "\u202e" * 10, "{\"type\":\"task.assigned\",\"body\":7}",
]


class Hostility:
    def __init__(self, args):
        self.rng = random.Random(args.seed)
        self.target = args.mutations
        self.per_frame = args.per_frame
        self.stats_path = args.stats
        self.sent = 0
        self.kinds = {}
        self.connections = 0
        self.relayed = 0
        self.pool = []

    @property
    def hostile(self):
        return self.sent < self.target

    def count(self, kind):
        self.sent += 1
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if self.sent % 100 == 0 or self.sent == self.target:
            self.write_stats()

    def write_stats(self):
        stats = {
            "mutations": self.sent, "target": self.target, "clean": not self.hostile,
            "connections": self.connections, "relayed": self.relayed, "kinds": self.kinds,
        }
        with open(self.stats_path + ".part", "w") as out:
            json.dump(stats, out)
        os.replace(self.stats_path + ".part", self.stats_path)

    def remember(self, text):
        if len(self.pool) < 400:
            self.pool.append(text)
        else:
            self.pool[self.rng.randrange(len(self.pool))] = text

    def value(self):
        return self.rng.choice(HOSTILE_VALUES)

    def mutate_object(self, thing, depth=0):
        """Changes one field somewhere inside `thing` (a dict or list), or adds one."""
        rng = self.rng
        if isinstance(thing, dict) and thing:
            key = rng.choice(list(thing.keys()))
            choice = rng.randrange(5)
            if choice == 0:
                del thing[key]
            elif choice == 1:
                thing["unknown" + str(rng.randrange(9))] = self.value()
            elif choice == 2 and isinstance(thing[key], (dict, list)) and depth < 6:
                self.mutate_object(thing[key], depth + 1)
            elif choice == 3 and isinstance(thing[key], str) and thing[key]:
                text = thing[key]
                cut = rng.randrange(len(text))
                thing[key] = text[:cut] + rng.choice(["\x1b", "\u202e", "/..", "\x00", "=", "9" * 30]) + text[cut + 1:]
            else:
                thing[key] = self.value()
        elif isinstance(thing, list) and thing:
            index = rng.randrange(len(thing))
            if isinstance(thing[index], (dict, list)) and depth < 6 and rng.random() < 0.5:
                self.mutate_object(thing[index], depth + 1)
            elif rng.random() < 0.3:
                thing.append(thing[index])
            else:
                thing[index] = self.value()
        return thing

    def mutate_json(self, text):
        """A read view's JSON answer with one field changed, or cut short."""
        try:
            value = json.loads(text)
        except ValueError:
            return text[: len(text) // 2], "truncated"
        if isinstance(value, (dict, list)) and self.rng.random() < 0.85:
            for _ in range(self.rng.randrange(1, 4)):
                self.mutate_object(value)
            return json.dumps(value), "body"
        return self.mutate(text)

    def mutate(self, text):
        """One mutated frame made from `text` (a frame the market sent): (payload, kind)."""
        rng = self.rng
        if rng.random() < 0.08:
            raw = rng.choice(RAW)
            return raw, "raw"
        if rng.random() < 0.04:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))), "binary"
        if rng.random() < 0.05 and self.pool:
            return rng.choice(self.pool), "replay"
        if rng.random() < 0.06 and text:
            cut = rng.randrange(len(text))
            return text[:cut] + rng.choice(["", "\"", "}", "\\u0000", "\\ud800"]), "truncated"
        try:
            envelope = json.loads(text)
        except ValueError:
            return text[::-1], "reversed"
        if not isinstance(envelope, dict):
            return json.dumps(self.value()), "value"
        choice = rng.randrange(10)
        if choice == 0:
            envelope["type"] = rng.choice(TYPES)
            kind = "type"
        elif choice == 1:
            self.mutate_object(envelope)
            kind = "envelope"
        else:
            kind = "body"
            body = envelope.get("body")
            try:
                decoded = json.loads(body) if isinstance(body, str) else None
            except ValueError:
                decoded = None
            if isinstance(decoded, (dict, list)):
                for _ in range(rng.randrange(1, 4)):
                    self.mutate_object(decoded)
                envelope["body"] = json.dumps(decoded)
            else:
                envelope["body"] = json.dumps(self.value()) if rng.random() < 0.5 else self.value()
            if rng.random() < 0.3:
                envelope["type"] = rng.choice(TYPES)
        try:
            return json.dumps(envelope), kind
        except (TypeError, ValueError):
            return text, "unchanged"

    async def handle(self, client):
        self.connections += 1
        path = client.request.path if getattr(client, "request", None) else "/market"
        try:
            async with websockets.connect(UPSTREAM + path, max_size=None, open_timeout=10) as upstream:
                async def up():
                    async for message in client:
                        await upstream.send(message)

                async def down():
                    async for message in upstream:
                        self.relayed += 1
                        if isinstance(message, str):
                            self.remember(message)
                        before = self.hostile and self.rng.random() < 0.5
                        if not before:
                            await client.send(message)
                        for _ in range(self.per_frame if self.hostile else 0):
                            if not self.hostile:
                                break
                            source = message if self.rng.random() < 0.6 or not self.pool else self.rng.choice(self.pool)
                            mutated, kind = self.mutate(source if isinstance(source, str) else "")
                            await client.send(mutated)
                            self.count(kind)
                        if before:
                            await client.send(message)

                done, pending = await asyncio.wait(
                    [asyncio.ensure_future(up()), asyncio.ensure_future(down())],
                    return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
        except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
            pass


UPSTREAM = ""
HOSTILITY = None


def fetch(path):
    """The real market's answer to a read view (GET), as (status, content type, body)."""
    url = "http" + UPSTREAM[len("ws"):] + path
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.headers.get("Content-Type", "application/json"), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", "application/json"), error.read()


async def read_views(connection, request):
    """Plain HTTP (the read views a participant asks for) goes to the real market too, and its
    JSON answers are mutated like frames while the market is hostile."""
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return None
    status, content_type, body = await asyncio.get_running_loop().run_in_executor(None, fetch, request.path)
    hostility = HOSTILITY
    if hostility.hostile and content_type.startswith("application/json") and hostility.rng.random() < 0.5:
        mutated, kind = hostility.mutate_json(body.decode("utf-8", "replace"))
        body = mutated.encode("utf-8", "surrogatepass") if isinstance(mutated, str) else mutated
        hostility.count("view-" + kind)
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))), ("Connection", "close")])
    return Response(status, "answer", headers, body)


async def main():
    global UPSTREAM
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="the real market, ws://127.0.0.1:PORT (no path)")
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--stats", required=True)
    parser.add_argument("--mutations", type=int, default=10000)
    parser.add_argument("--per-frame", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not args.upstream.startswith("ws://127.") and not args.upstream.startswith("ws://localhost"):
        sys.exit("hostile_market: --upstream must be a loopback ws:// address")
    UPSTREAM = args.upstream.rstrip("/")
    # A parent that handles SIGTERM itself may have it blocked, and a blocked mask is inherited.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    global HOSTILITY
    hostility = Hostility(args)
    HOSTILITY = hostility
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    async with websockets.serve(hostility.handle, "127.0.0.1", 0, max_size=None, process_request=read_views) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with open(args.port_file + ".part", "w") as out:
            json.dump({"port": port}, out)
        os.replace(args.port_file + ".part", args.port_file)
        hostility.write_stats()
        await stop
    hostility.write_stats()


if __name__ == "__main__":
    asyncio.run(main())

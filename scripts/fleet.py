#!/usr/bin/env python3
"""Small queries on the fleet for the shell scripts (deploy, adopt, first install), so that
none of them parses TOML or JSON in shell. Standard library only. (The fleet's status is
`x0x status --inventory hosts/inventory.toml`, docs/NIX.md.)

  fleet.py names                                 node names, in inventory order
  fleet.py get NAME FIELD                        one inventory field, [defaults] applied
  fleet.py target NAME                           root@<ipv4>
  fleet.py keys FILE                             count the public keys in an authorized_keys file
  fleet.py facts FACTS_JSON                      "adopted <os id>" or "unadopted"; exit 0 either way
  fleet.py health [--peer-id ID] [--min-peers N] HEALTH_JSON|-
                                                 exit 0 when /health says the node is healthy with
                                                 all its peers (or at least N) and the expected key;
                                                 prints the verdict in words

Environment: X0X_INVENTORY (default: hosts/inventory.toml next to this script's parent).
"""

import json
import os
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def inventory():
    path = pathlib.Path(os.environ.get("X0X_INVENTORY", ROOT / "hosts" / "inventory.toml"))
    with open(path, "rb") as f:
        inv = tomllib.load(f)
    defaults = inv.get("defaults", {})
    return [defaults | n for n in inv["node"]]


def node(name):
    for n in inventory():
        if n["name"] == name:
            return n
    raise SystemExit(f"fleet: {name} is not in the inventory")


def read_json(arg):
    text = sys.stdin.read() if arg == "-" else pathlib.Path(arg).read_text()
    return json.loads(text)


def health(args):
    peer_id = min_peers = None
    rest = []
    it = iter(args)
    for a in it:
        if a == "--peer-id":
            peer_id = next(it)
        elif a == "--min-peers":
            min_peers = int(next(it))
        else:
            rest.append(a)
    try:
        h = read_json(rest[0] if rest else "-")
    except (json.JSONDecodeError, FileNotFoundError) as e:
        print(f"no health answer ({e.__class__.__name__})")
        return 1
    peers, expected = h.get("peers"), h.get("expected_peers")
    if peer_id and h.get("peer_id") != peer_id:
        print(f"peer_id changed: {h.get('peer_id')} (expected {peer_id}): the node key was not kept")
        return 1
    if min_peers is not None:
        ok = isinstance(peers, int) and peers >= min_peers
        verdict = f"{peers}/{expected} peers (at least {min_peers} required), status {h.get('status')}"
    else:
        ok = h.get("status") == "healthy" and peers == expected
        verdict = f"{peers}/{expected} peers, status {h.get('status')}"
    print(("healthy: " if ok else "not yet: ") + verdict + f", peer_id {str(h.get('peer_id'))[:16]}…")
    return 0 if ok else 1


def main(argv):
    if not argv:
        print(__doc__)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "names":
        print("\n".join(n["name"] for n in inventory()))
    elif cmd == "get":
        value = node(args[0]).get(args[1])
        if value is None:
            return 1
        print(value)
    elif cmd == "target":
        print(f"root@{node(args[0])['ipv4']}")
    elif cmd == "keys":
        text = pathlib.Path(args[0]).read_text() if pathlib.Path(args[0]).exists() else ""
        keys = [l for l in (line.strip() for line in text.splitlines()) if l and not l.startswith("#")]
        bad = [k for k in keys if not re.match(r"^(ssh-(ed25519|rsa)|ecdsa-sha2-nistp\d+|sk-\S+)\s+\S+", k)]
        if bad:
            print(f"{len(bad)} line(s) of {args[0]} are not OpenSSH public keys", file=sys.stderr)
            return 1
        print(len(keys))
    elif cmd == "facts":
        f = read_json(args[0])
        print(f"adopted {(f.get('os_release') or {}).get('id')}" if f.get("adopted") else "unadopted")
    elif cmd == "health":
        return health(args)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

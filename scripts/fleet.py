#!/usr/bin/env python3
"""Small queries on the fleet for the shell scripts (deploy, adopt, first install, fleet
status), so that none of them parses TOML or JSON in shell. Standard library only.

  fleet.py names                                 node names, in inventory order
  fleet.py get NAME FIELD                        one inventory field, [defaults] applied
  fleet.py target NAME                           root@<ipv4>
  fleet.py addrs                                 NAME ipv4:quic_port, one per line
  fleet.py keys FILE                             count the public keys in an authorized_keys file
  fleet.py facts FACTS_JSON                      "adopted <os id>" or "unadopted"; exit 0 either way
  fleet.py health [--peer-id ID] [--min-peers N] HEALTH_JSON|-
                                                 exit 0 when /health says the node is healthy with
                                                 all its peers (or at least N) and the expected key;
                                                 prints the verdict in words
  fleet.py status-report STATUS_JSON|-           `x0x status --json` as one line per node, names
                                                 from the inventory; exit 0 only if healthy

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


def status_report(arg):
    s = read_json(arg)
    names = {f"{n['ipv4']}:{n['quic_port']}": n["name"] for n in inventory()}
    # Peer ids to names: the inventory's pins, then what each reachable node says it is.
    ids = {n["peer_id"]: n["name"] for n in inventory() if n.get("peer_id")}
    for n in s.get("nodes", []):
        if n.get("peer_id"):
            ids[n["peer_id"]] = n.get("name") or names.get(n.get("addr"), n.get("addr"))
    for n in s.get("nodes", []):
        name = n.get("name") or names.get(n.get("addr"), n.get("addr"))
        if not n.get("reachable"):
            print(f"{name:<10} {n.get('addr'):<22} UNREACHABLE")
            continue
        down = [ids.get(m["peer_id"], m["peer_id"][:12] + "…") for m in n.get("mesh", []) if not m.get("connected")]
        print(f"{name:<10} {n.get('addr'):<22} {n.get('status'):<9} peers {n.get('peers')}/{n.get('expected_peers')}"
              f"  rtt {n.get('rtt_ms')} ms  v{n.get('version')}  up {n.get('uptime_s')} s"
              + (f"  does not see {', '.join(down)}" if down else ""))
    print("fleet healthy" if s.get("healthy") else "fleet NOT healthy")
    return 0 if s.get("healthy") else 1


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
    elif cmd == "addrs":
        for n in inventory():
            print(f"{n['name']} {n['ipv4']}:{n['quic_port']}")
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
    elif cmd == "status-report":
        return status_report(args[0] if args else "-")
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env python3
"""Turn what a machine says about itself into hosts/facts/<name>.json.

scripts/adopt-host.sh runs the collector (`collector` below, POSIX sh) on the machine over
SSH and feeds its output here. Everything that decides what goes into the NixOS
configuration is in this file, so it is tested on captured outputs
(scripts/testdata/adopt/<case>/capture.txt -> expected.json) without any machine:

  adopt_facts.py collector                      print the collector script
  adopt_facts.py parse --name N --capture F [--from T] [--at ISO] [--previous FACTS]
                                                facts JSON on stdout; exit 1 with the reason
                                                when the machine cannot be adopted safely
  adopt_facts.py check-inventory --facts F --inventory hosts/inventory.toml
                                                compare the facts with the node's inventory entry
  adopt_facts.py test DIR                       every case under DIR; PASS/FAIL lines

Python 3.11 standard library only (tomllib).
"""

import argparse
import ipaddress
import json
import pathlib
import re
import sys
import tomllib

SCHEMA = 1

COLLECTOR = r"""#!/bin/sh
# x0x adopt-host collector: read-only, prints one section per fact source.
export LC_ALL=C
section() { printf '===x0x:%s\n' "$1"; }
section uname; uname -m
section efi; if [ -d /sys/firmware/efi ]; then echo present; else echo absent; fi
section ip-link; ip -j -d link show
section ip-addr; ip -j addr show
section ip-route4; ip -j -4 route show table main
section ip-route6; ip -j -6 route show table main
section lsblk; lsblk -J -b -o NAME,PATH,TYPE,SIZE,FSTYPE,UUID,LABEL,PARTUUID,PKNAME
section findmnt; findmnt -J -l -o TARGET,SOURCE,FSTYPE,UUID,LABEL
section swaps; cat /proc/swaps
section by-id
for l in /dev/disk/by-id/*; do [ -L "$l" ] && printf '%s %s\n' "${l##*/}" "$(readlink -f "$l")"; done
section resolv
if [ -f /run/systemd/resolve/resolv.conf ]; then cat /run/systemd/resolve/resolv.conf; else cat /etc/resolv.conf; fi
section os-release; cat /etc/os-release
section state-version; grep -h 'stateVersion' /etc/nixos/*.nix 2>/dev/null || true
section meminfo; grep '^MemTotal:' /proc/meminfo
section hostname; hostname
section end
"""

REQUIRED = ["uname", "efi", "ip-link", "ip-addr", "ip-route4", "ip-route6", "lsblk",
            "findmnt", "swaps", "by-id", "resolv", "os-release", "state-version",
            "meminfo", "hostname", "end"]


class AdoptError(Exception):
    """The machine cannot be adopted as it is: the message says why."""


def split_sections(text):
    sections, name, lines = {}, None, []
    for line in text.splitlines():
        m = re.fullmatch(r"===x0x:([a-z0-9-]+)", line)
        if m:
            if name is not None:
                sections[name] = "\n".join(lines)
            name, lines = m.group(1), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        sections[name] = "\n".join(lines)
    missing = [s for s in REQUIRED if s not in sections]
    if missing:
        raise AdoptError(f"capture is incomplete (the collector stopped early?): no section {', '.join(missing)}")
    return sections


def load_json(sections, name):
    try:
        return json.loads(sections[name] or "null")
    except json.JSONDecodeError as e:
        raise AdoptError(f"section {name}: not JSON ({e})") from None


def flatten_blockdevices(devs):
    for d in devs or []:
        yield d
        yield from flatten_blockdevices(d.get("children"))


def os_release(text):
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Z_]+)=(.*)", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"').strip("'")
    return out


def stable(fs):
    """The identity a file system is mounted by: UUID, else label."""
    return {"uuid": fs.get("uuid"), "label": fs.get("label")}


def parse(name, capture, source=None, at=None, previous=None):
    s = split_sections(capture)
    notes = []

    machine = s["uname"].strip()
    systems = {"x86_64": "x86_64-linux", "aarch64": "aarch64-linux"}
    if machine not in systems:
        raise AdoptError(f"unsupported machine type {machine!r}")
    firmware = "uefi" if s["efi"].strip() == "present" else "bios"

    # --- file systems -------------------------------------------------------------
    blocks = {d["path"]: d for d in flatten_blockdevices((load_json(s, "lsblk") or {}).get("blockdevices"))}
    mounts = (load_json(s, "findmnt") or {}).get("filesystems", [])

    def mounted(target):
        found = [m for m in mounts if m["target"] == target]
        return found[-1] if found else None  # the last mount on a target is the visible one

    def blockdev_of(mount):
        src = mount["source"]
        dev = blocks.get(src)
        if dev is None and mount.get("uuid"):
            dev = next((d for d in blocks.values() if d.get("uuid") == mount["uuid"]), None)
        return dev

    root_mount = mounted("/")
    if root_mount is None:
        raise AdoptError("findmnt lists no / mount")
    root_dev = blockdev_of(root_mount)
    if root_dev is None:
        raise AdoptError(f"root file system {root_mount['source']} is not a block device lsblk knows")
    if not (root_dev.get("uuid") or root_dev.get("label")):
        raise AdoptError(f"root file system on {root_dev['path']} has neither UUID nor label: "
                         "it could only be mounted by device name")
    if root_dev.get("type") != "part" or not root_dev.get("pkname"):
        raise AdoptError(f"root file system is on {root_dev['path']} ({root_dev.get('type')}), not on a "
                         "partition of a disk: GRUB has nowhere to go")
    root = {"device": root_dev["path"], **stable(root_dev), "fstype": root_dev.get("fstype") or root_mount["fstype"]}
    disk = "/dev/" + root_dev["pkname"]

    by_id = {}
    for line in s["by-id"].splitlines():
        parts = line.split()
        if len(parts) == 2:
            by_id.setdefault(parts[1], []).append(parts[0])

    esp = None
    for target in ("/boot/efi", "/boot/EFI", "/boot"):
        m = mounted(target)
        if m and m["fstype"] == "vfat":
            dev = blockdev_of(m)
            if dev is None or not (dev.get("uuid") or dev.get("label")):
                raise AdoptError(f"EFI system partition at {target} has no UUID or label")
            esp = {"mount": target, "device": dev["path"], **stable(dev), "fstype": "vfat"}
            break

    if firmware == "uefi":
        if esp is None:
            raise AdoptError("booted by UEFI but no EFI system partition (vfat) is mounted at /boot/efi or /boot")
        boot = {"loader": "grub-efi"}
    else:
        # The whole disk by a stable name when it has one (virtio-scsi disks carry a
        # serial, plain virtio-blk disks often do not); else the kernel's name, which is
        # stable on a single-disk VM.
        ids = sorted(n for n in by_id.get(disk, []) if not re.search(r"-part\d+$", n))
        preferred = [n for n in ids if n.startswith(("virtio-", "scsi-", "nvme-", "ata-"))] or ids
        grub_device = f"/dev/disk/by-id/{preferred[0]}" if preferred else disk
        boot = {"loader": "grub-bios", "grub_device": grub_device}
        if esp is not None:
            notes.append(f"BIOS boot; the EFI partition mounted at {esp['mount']} is left unmounted")
            esp = None

    swap = []
    for line in s["swaps"].splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2:
            dev = blocks.get(parts[0])
            if parts[1] == "partition" and dev and (dev.get("uuid") or dev.get("label")):
                swap.append({"device": dev["path"], **stable(dev)})
            else:
                notes.append(f"swap {parts[0]} ({parts[1]}) is not adopted: only swap partitions with a UUID are")

    # --- network --------------------------------------------------------------------
    links = {l["ifname"]: l for l in load_json(s, "ip-link") or []}
    addrs = load_json(s, "ip-addr") or []
    routes4 = load_json(s, "ip-route4") or []
    routes6 = load_json(s, "ip-route6") or []

    def physical(ifname):
        link = links.get(ifname, {})
        return link.get("link_type") == "ether" and "linkinfo" not in link

    def defaults(routes):
        best = {}
        for r in routes:
            if r.get("dst") != "default" or "gateway" not in r or "dev" not in r:
                continue
            key = r["dev"]
            if key not in best or r.get("metric", 0) < best[key].get("metric", 0):
                best[key] = r
        return best

    def4, def6 = defaults(routes4), defaults(routes6)

    interfaces, routes = [], []
    for a in addrs:
        ifname = a["ifname"]
        if not physical(ifname):
            if ifname != "lo" and any(i.get("scope") == "global" for i in a.get("addr_info", [])):
                notes.append(f"{ifname} ({(links.get(ifname, {}).get('linkinfo') or {}).get('info_kind', a.get('link_type'))}) is not a NIC: not adopted")
            continue
        static, dynamic, nets = [], [], []
        for i in a.get("addr_info", []):
            if i.get("scope") != "global" or i.get("temporary"):
                continue
            cidr = f"{i['local']}/{i['prefixlen']}"
            nets.append(ipaddress.ip_interface(cidr).network)
            if i["family"] == "inet6" and i.get("dynamic"):
                dynamic.append(cidr)  # SLAAC: comes back from the router advertisements
            else:
                static.append(cidr)  # IPv4 DHCP leases are pinned statically, as nixos-infect does
        r4, r6 = def4.get(ifname), def6.get(ifname)
        if not static and not dynamic and not r4 and not r6:
            continue
        accept_ra = bool(dynamic) or (r6 is not None and r6.get("protocol") == "ra")
        for r in (r4, r6):
            if r is None or r.get("protocol") == "ra":
                continue
            gw = ipaddress.ip_address(r["gateway"])
            onlink = "onlink" in r.get("flags", []) or (
                gw.version == 4 and not any(gw in n for n in nets if n.version == 4))
            routes.append({"interface": ifname, "gateway": r["gateway"], "onlink": onlink})
        interfaces.append({
            "name": ifname,
            "mac": a.get("address"),
            "addresses": static,
            "dynamic_addresses": dynamic,
            "ipv6_accept_ra": accept_ra,
        })
    if not any(ipaddress.ip_address(r["gateway"]).version == 4 for r in routes):
        raise AdoptError("no default IPv4 route through a NIC: refusing to write a network the node cannot leave")

    resolvers = []
    for line in s["resolv"].splitlines():
        m = re.match(r"\s*nameserver\s+(\S+)", line)
        if m:
            ip = ipaddress.ip_address(m.group(1).split("%")[0])
            if not ip.is_loopback and str(ip) not in resolvers:
                resolvers.append(str(ip))
    if not resolvers:
        raise AdoptError("no resolver other than loopback in resolv.conf")

    osr = os_release(s["os-release"])
    state_version = None
    if osr.get("ID") == "nixos":
        m = re.search(r'stateVersion\s*=\s*"([0-9]+\.[0-9]+)"', s["state-version"])
        if m:
            state_version = m.group(1)
        elif previous and previous.get("state_version"):
            state_version = previous["state_version"]
            notes.append("stateVersion not in /etc/nixos: kept from the previous facts")
        else:
            raise AdoptError("NixOS, but no stateVersion in /etc/nixos/*.nix and none in the previous facts")

    mem = re.search(r"MemTotal:\s+(\d+)\s+kB", s["meminfo"])

    return {
        "schema": SCHEMA,
        "name": name,
        "adopted": {
            "at": at,
            "from": source,
            "hostname": s["hostname"].strip(),
            "os": osr.get("PRETTY_NAME"),
        },
        "note": "Read off the machine by scripts/adopt-host.sh; " + ("; ".join(notes) if notes else "nothing left out"),
        "system": systems[machine],
        "memory_kib": int(mem.group(1)) if mem else None,
        "firmware": firmware,
        "boot": boot,
        "root": root,
        "esp": esp,
        "swap": swap,
        "interfaces": interfaces,
        "routes": routes,
        "resolvers": resolvers,
        # null on a machine that is not NixOS yet: the first install gives it the
        # release it installs (hosts/hardware.nix), and adopting it again records that.
        "state_version": state_version,
        "os_release": {"id": osr.get("ID"), "version_id": osr.get("VERSION_ID")},
    }


def check_inventory(facts, inventory):
    """Differences between the facts and the node's inventory entry, in words."""
    node = next((n for n in inventory["node"] if n["name"] == facts["name"]), None)
    if node is None:
        return [f"{facts['name']} is not in the inventory"]
    problems = []
    on_machine = {}
    for iface in facts["interfaces"]:
        for cidr in iface["addresses"] + iface["dynamic_addresses"]:
            ip, prefix = cidr.split("/")
            on_machine[ip] = (int(prefix), iface["name"])
    if node["ipv4"] not in on_machine:
        problems.append(f"inventory ipv4 {node['ipv4']} is not on the machine (it has {', '.join(on_machine) or 'nothing'})")
    else:
        prefix, ifname = on_machine[node["ipv4"]]
        if node.get("ipv4_prefix_length") not in (None, prefix):
            problems.append(f"inventory ipv4_prefix_length {node['ipv4_prefix_length']}, machine /{prefix}")
        gws = [r["gateway"] for r in facts["routes"] if r["interface"] == ifname and "." in r["gateway"]]
        if node.get("ipv4_gateway") and node["ipv4_gateway"] not in gws:
            problems.append(f"inventory ipv4_gateway {node['ipv4_gateway']}, machine {', '.join(gws) or 'none'}")
    if "ipv6" in node and node["ipv6"] not in on_machine:
        problems.append(f"inventory ipv6 {node['ipv6']} is not on the machine")
    return problems


def inventory_notes(facts, inventory):
    """What the inventory could say and does not (not an error)."""
    node = next((n for n in inventory["node"] if n["name"] == facts["name"]), {})
    v6 = [cidr for iface in facts["interfaces"] for cidr in iface["addresses"] + iface["dynamic_addresses"] if ":" in cidr]
    if v6 and "ipv6" not in node:
        return [f"the machine has IPv6 {', '.join(v6)}; add ipv6 to its inventory entry to publish it"]
    return []


def run_tests(directory):
    fails = 0
    cases = sorted(p for p in pathlib.Path(directory).iterdir() if p.is_dir())
    for case in cases:
        capture = (case / "capture.txt").read_text()
        meta = json.loads((case / "case.json").read_text())
        previous = json.loads((case / "previous.json").read_text()) if (case / "previous.json").exists() else None
        try:
            got = parse(meta["name"], capture, source=meta.get("from"), at="TEST", previous=previous)
            err = None
        except AdoptError as e:
            got, err = None, str(e)
        if "error" in meta:
            if err is not None and meta["error"] in err:
                print(f"PASS {case.name}: refused ({err})")
            else:
                print(f"FAIL {case.name}: expected refusal containing {meta['error']!r}, got {err or 'facts'}")
                fails += 1
            continue
        if err is not None:
            print(f"FAIL {case.name}: {err}")
            fails += 1
            continue
        want = json.loads((case / "expected.json").read_text())
        if got == want:
            print(f"PASS {case.name}: facts as expected ({meta.get('what', '')})")
        else:
            fails += 1
            print(f"FAIL {case.name}: facts differ from expected.json")
            for key in sorted(set(got) | set(want)):
                if got.get(key) != want.get(key):
                    print(f"  {key}: got {json.dumps(got.get(key))}\n  {' ' * len(key)}  want {json.dumps(want.get(key))}")
        if "inventory_problems" in meta:
            inv = {"node": [meta["inventory_node"]]}
            problems = check_inventory(got, inv)
            if problems == meta["inventory_problems"]:
                print(f"PASS {case.name}: inventory comparison ({len(problems)} difference(s))")
            else:
                fails += 1
                print(f"FAIL {case.name}: inventory comparison gave {problems}")
    print(f"adopt parsing: {len(cases)} cases, {fails} failed")
    return 1 if fails or not cases else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("collector")
    p = sub.add_parser("parse")
    p.add_argument("--name", required=True)
    p.add_argument("--capture", required=True)
    p.add_argument("--from", dest="source")
    p.add_argument("--at")
    p.add_argument("--previous")
    c = sub.add_parser("check-inventory")
    c.add_argument("--facts", required=True)
    c.add_argument("--inventory", required=True)
    t = sub.add_parser("test")
    t.add_argument("directory")
    args = ap.parse_args()

    if args.cmd == "collector":
        sys.stdout.write(COLLECTOR)
        return 0
    if args.cmd == "test":
        return run_tests(args.directory)
    if args.cmd == "check-inventory":
        facts = json.loads(pathlib.Path(args.facts).read_text())
        with open(args.inventory, "rb") as f:
            problems = check_inventory(facts, tomllib.load(f))
            f.seek(0)
            notes = inventory_notes(facts, tomllib.load(f))
        for p in problems:
            print(f"inventory: {p}")
        for n in notes:
            print(f"note: {n}")
        return 1 if problems else 0
    previous = None
    if args.previous and pathlib.Path(args.previous).exists():
        previous = json.loads(pathlib.Path(args.previous).read_text())
    try:
        facts = parse(args.name, pathlib.Path(args.capture).read_text(), args.source, args.at, previous)
    except AdoptError as e:
        print(f"adopt: {args.name}: {e}", file=sys.stderr)
        return 1
    json.dump(facts, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

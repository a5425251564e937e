#!/usr/bin/env python3
"""Write the files a NixOS system would have for x0x-bootstrap, from the module's
evaluation (scripts/nix/render-unit.nix), into a directory laid out like a root file
system, for scripts/check-systemd.sh:

  render_unit.py EVAL_JSON ROOT [--config-path /etc/x0x-bootstrap/config.toml]

  ROOT/etc/systemd/system/x0x-bootstrap.service   [Unit] and [Service] as NixOS renders
                                                  them (systemd-lib's attrsToSection: a list
                                                  is one line per element, [""] an empty
                                                  assignment, booleans true/false)
  ROOT/etc/systemd/system/x0x-bootstrap.socket    when the module defines the socket
  ROOT/etc/x0x-bootstrap/config.toml              `settings` as TOML (what
                                                  pkgs.formats.toml writes), mode 0644
  ROOT/etc/sysusers.d/x0x-bootstrap.conf          users.users/groups as systemd-sysusers
                                                  lines (NixOS creates them at activation)

The only substitution: the config file's store path in ExecStart becomes --config-path.
Prints the service file on stdout.
"""

import json
import os
import re
import sys


def value(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    return str(v)


def section(name, attrs):
    lines = [f"[{name}]"]
    for key in sorted(attrs):
        v = attrs[key]
        if v is None:
            continue
        for item in v if isinstance(v, list) else [v]:
            lines.append(f"{key}={value(item)}")
    return "\n".join(lines) + "\n"


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise ValueError(f"no TOML for {v!r}")


def toml(d, prefix=()):
    out = []
    scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in d.items() if isinstance(v, dict)}
    if prefix and scalars:
        out.append(f"[{'.'.join(prefix)}]")
    for k in sorted(scalars):
        out.append(f"{k} = {toml_value(scalars[k])}")
    if scalars:
        out.append("")
    for k in sorted(tables):
        out.extend(toml(tables[k], prefix + (k,)))
    return out


def main():
    args = sys.argv[1:]
    config_path = "/etc/x0x-bootstrap/config.toml"
    if "--config-path" in args:
        i = args.index("--config-path")
        config_path = args[i + 1]
        del args[i:i + 2]
    ev = json.load(open(args[0]))
    root = args[1]
    if ev["failed"]:
        sys.exit(f"render_unit: the evaluation has failed assertions: {ev['failed']}")
    svc = ev["service"]
    sc = dict(svc["serviceConfig"])
    exec_start, n = re.subn(r"/nix/store/[0-9a-z]{32}-x0x-bootstrap(-checked)?\.toml", config_path, sc["ExecStart"])
    if n != 1:
        sys.exit(f"render_unit: no config file store path in ExecStart: {sc['ExecStart']}")
    sc["ExecStart"] = exec_start
    unit = {"Description": svc.get("description")}
    for key, nix in (("Wants", "wants"), ("After", "after"), ("Requires", "requires"), ("Before", "before")):
        if svc.get(nix):
            unit[key] = " ".join(svc[nix])
    unit.update(svc.get("unitConfig") or {})
    text = "# Rendered by scripts/render_unit.py from the module's evaluation\n"
    text += section("Unit", unit) + "\n" + section("Service", sc)
    if svc.get("wantedBy"):
        text += "\n" + section("Install", {"WantedBy": " ".join(svc["wantedBy"])})
    units = os.path.join(root, "etc/systemd/system")
    os.makedirs(units, exist_ok=True)
    with open(os.path.join(units, "x0x-bootstrap.service"), "w") as f:
        f.write(text)
    sock = ev.get("socket")
    if sock:
        stext = "# Rendered by scripts/render_unit.py from the module's evaluation\n"
        stext += section("Unit", {"Description": sock.get("description")}) + "\n"
        stext += section("Socket", {"ListenStream": sock.get("listenStreams", []), **sock.get("socketConfig", {})})
        if sock.get("wantedBy"):
            stext += "\n" + section("Install", {"WantedBy": " ".join(sock["wantedBy"])})
        with open(os.path.join(units, "x0x-bootstrap.socket"), "w") as f:
            f.write(stext)
    cfg_file = root + config_path
    os.makedirs(os.path.dirname(cfg_file), exist_ok=True)
    with open(cfg_file, "w") as f:
        f.write("\n".join(toml(ev["settings"])).rstrip() + "\n")
    os.chmod(cfg_file, 0o644)
    sysusers = os.path.join(root, "etc/sysusers.d")
    os.makedirs(sysusers, exist_ok=True)
    with open(os.path.join(sysusers, "x0x-bootstrap.conf"), "w") as f:
        for g in ev["groups"]:
            f.write(f"g {g} -\n")
        for name, u in ev["users"].items():
            f.write(f"u {name} - \"{u['description']}\" /var/empty\n")
            if u["group"] != name:
                f.write(f"m {name} {u['group']}\n")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()

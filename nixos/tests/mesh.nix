# Six bootstrap nodes built from the real host configurations (hosts/default.nix's `node`
# part: the same module, hosts/common.nix, peers logic and SSH lock-out check), with only
# the inventory's addresses remapped to the test network, and two agent machines with the
# x0x CLI. Left out, because they cannot apply in a VM: each host's `machine` part (disk,
# boot loader, provider addressing from hosts/facts); the test driver gives node N (in
# name order: alice, bob, saorsa-2, ...) the address 192.168.1.N on eth1 instead.
# Added for the test only: root's SSH key (the lock-out check wants one), curl, jq, a QUIC
# probe, and on saorsa-9 an identityFile instead of a generated key.
#
# Written for `nix flake check` on x86_64-linux with KVM; it has not run on our machines
# (no KVM, no nixpkgs): see docs/NIX.md.
{ self }:
{ lib, pkgs, ... }:
let
  inventory = builtins.fromTOML (builtins.readFile ../../hosts/inventory.toml);
  inherit (pkgs.stdenv.hostPlatform) system;

  agents = [ "alice" "bob" ];
  # The driver numbers all nodes 1..n in name order: node N is 192.168.1.N.
  names = lib.sort lib.lessThan (agents ++ map (node: node.name) inventory.node);
  testAddress = name: "192.168.1.${toString (lib.lists.findFirstIndex (n: n == name) null names + 1)}";

  testInventory = inventory // {
    node = map
      (node: node // {
        ipv4 = testAddress node.name;
        ipv4_gateway = "192.168.1.254";
      })
      inventory.node;
  };

  hosts = import ../../hosts { inventory = testInventory; };
  nodeNames = map (node: node.name) inventory.node;

  # The snakeoil key pair of nixpkgs' own tests.
  sshKeys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;

  # A QUIC long-header datagram with a version no server speaks (the reserved
  # 0x?a?a?a?a pattern, RFC 9000 section 15), padded to 1200 bytes. A QUIC server
  # answers it with Version Negotiation, without any handshake or key.
  quicProbe = pkgs.writers.writePython3Bin "quic-probe" { } ''
    import os
    import socket
    import sys

    host, port = sys.argv[1], int(sys.argv[2])
    dcid, scid = os.urandom(8), os.urandom(8)
    packet = bytes([0xC0]) + bytes.fromhex("1a2a3a4a")
    packet += bytes([8]) + dcid + bytes([8]) + scid
    packet += bytes(1200 - len(packet))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(packet, (host, port))
        try:
            reply = sock.recv(2048)
        except OSError as err:
            sys.exit(f"no QUIC answer from {host}:{port}: {err}")
    # Version Negotiation: version 0, our source CID as its destination.
    if reply[1:5] != bytes(4) or reply[5] != 8 or reply[6:14] != scid:
        sys.exit(f"not a version negotiation: {reply[:16].hex()}")
    print(f"QUIC version negotiation from {host}:{port}")
  '';

  x0x-cli = self.packages.${system}.x0x-cli;

  identityNode = "saorsa-9";
  identityFile = "/var/lib/x0x-keys/node.pem";

  pythonName = builtins.replaceStrings [ "-" ] [ "_" ];
  pythonList = list: "[${lib.concatMapStringsSep ", " pythonName list}]";
  bootstrapArgs = lib.concatMapStringsSep " " (n: "--bootstrap ${testAddress n}:12000") nodeNames;
in
{
  name = "x0x-bootstrap-mesh";

  nodes =
    lib.mapAttrs
      (name: host: {
        imports = [ self.nixosModules.default host.node ];
        users.users.root.openssh.authorizedKeys.keys = [ sshKeys.snakeOilPublicKey ];
        environment.systemPackages = [ pkgs.jq quicProbe x0x-cli ];
        services.x0x-bootstrap.identityFile = lib.mkIf (name == identityNode) identityFile;
      })
      hosts
    // lib.genAttrs agents (_: {
      environment.systemPackages = [ x0x-cli pkgs.jq ];
      networking.firewall.enable = false;
      virtualisation.memorySize = 512;
    });

  testScript = ''
    import json
    import re
    import time

    MAX_EXPOSURE = 2.0
    HEALTH = "curl -sf --max-time 3 http://127.0.0.1:12600/health"
    BOOTSTRAP = "${bootstrapArgs}"
    # The six nodes in name order, and their addresses on the test network.
    mesh = ${pythonList nodeNames}
    addr = {m: a for m, a in zip(mesh, ${builtins.toJSON (map testAddress nodeNames)})}
    first, second, stopped, blocked = mesh[0], mesh[1], mesh[4], mesh[5]
    identity_node = ${pythonName identityNode}


    def others(*nodes):
        return [m for m in mesh if m not in nodes]


    def health(m):
        return json.loads(m.succeed(HEALTH))


    def wait_peers(nodes, count, seconds):
        """Every node in `nodes` reports `count` peers within `seconds` in all."""
        deadline = time.monotonic() + seconds
        for m in nodes:
            left = max(1, int(deadline - time.monotonic()))
            m.wait_until_succeeds(
                f"{HEALTH} | jq -e '.peers == {count}'", timeout=left
            )


    def status(machine, expect_exit):
        """`x0x status --json` from `machine` over every node; its JSON."""
        rc, out = machine.execute(f"x0x status --json {BOOTSTRAP}")
        assert rc == expect_exit, f"x0x status exited {rc}, expected {expect_exit}: {out}"
        return json.loads(out)


    start_all()

    with subtest("identityFile: the node uses the provisioned key"):
        # Provisioned as an operator would: the key exists before the service starts.
        identity_node.wait_for_unit("multi-user.target")
        identity_node.succeed("install -d -m 0700 ${dirOf identityFile}")
        want = json.loads(
            identity_node.succeed("x0x id --json --key ${identityFile}")
        )["peer_id"]
        identity_node.succeed("chmod 600 ${identityFile}")
        identity_node.succeed("systemctl restart x0x-bootstrap.service")
        identity_node.wait_for_unit("x0x-bootstrap.service")
        identity_node.wait_until_succeeds(f"{HEALTH} | jq -e '.peer_id == \"{want}\"'")
        identity_node.fail("test -e /var/lib/x0x-bootstrap/node.key")

    for m in mesh:
        m.wait_for_unit("x0x-bootstrap.service")

    with subtest("the service runs as x0x, not root"):
        for m in mesh:
            m.succeed(
                'test "$(systemctl show -p User --value x0x-bootstrap)" = x0x',
                'pid="$(systemctl show -p MainPID --value x0x-bootstrap)"; '
                'test "$(ps -o user= -p "$pid")" = x0x',
            )

    with subtest("every node reports 5 peers"):
        wait_peers(mesh, 5, 180)
        for m in mesh:
            m.succeed(f"{HEALTH} | jq -e '.status == \"healthy\"'")

    with subtest("QUIC and TCP relay ports reachable from another node, health port not"):
        second.succeed(f"quic-probe {addr[first]} 12000")
        second.fail(f"quic-probe {addr[first]} 12001")
        # 443 is bound by x0x-bootstrap.socket and served by the unprivileged node.
        first.succeed(
            "journalctl -u x0x-bootstrap.service | grep -q 'using the TCP relay socket systemd passed'"
        )
        second.succeed(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{addr[first]}/443'")
        first.succeed(HEALTH)
        second.fail(f"curl -sf --max-time 3 http://{addr[first]}:12600/health")

    with subtest(f"systemd-analyze security exposure <= {MAX_EXPOSURE}"):
        out = first.succeed(
            "systemd-analyze security --no-pager x0x-bootstrap.service"
        )
        print(out)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
        assert found, "no overall exposure level in the output"
        exposure = float(found.group(1))
        assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}"
        first.succeed(
            "systemd-analyze security --threshold="
            f"{int(MAX_EXPOSURE * 10)} x0x-bootstrap.service"
        )

    with subtest("the node key survives a service restart"):
        before = health(first)["peer_id"]
        first.succeed("systemctl restart x0x-bootstrap.service")
        first.wait_for_unit("x0x-bootstrap.service")
        wait_peers([first], 5, 60)
        assert health(first)["peer_id"] == before, "peer_id changed on restart"

    with subtest("the node key survives a reboot"):
        before = health(second)["peer_id"]
        second.shutdown()
        wait_peers(others(second), 4, 30)
        second.start()
        second.wait_for_unit("x0x-bootstrap.service")
        wait_peers(mesh, 5, 180)
        assert health(second)["peer_id"] == before, "peer_id changed across a reboot"

    with subtest("x0x status: the fleet is healthy"):
        report = status(alice, 0)
        assert report["healthy"] is True, report
        assert len(report["nodes"]) == 6, report
        for node in report["nodes"]:
            assert node["reachable"] and node["peers"] == 5, node
            assert node["expected_peers"] == 5 and node["status"] == "healthy", node
            assert len(node["mesh"]) == 5, node
            assert all(link["connected"] for link in node["mesh"]), node

    with subtest("two agents connect through the mesh, direct and relayed"):
        # alice joins through the first node, bob through the last: the directory is shared.
        alice.succeed(
            f"systemd-run --unit=x0x-listen -p StandardOutput=file:/tmp/listen.json "
            f"x0x listen --json --bootstrap {addr[first]}:12000"
        )
        alice.wait_until_succeeds(
            "jq -e 'select(.event == \"ready\") | .peer_id' /tmp/listen.json", timeout=60
        )
        alice_id = json.loads(
            alice.succeed("jq -c 'select(.event == \"ready\")' /tmp/listen.json")
        )["peer_id"]
        direct = json.loads(
            bob.succeed(
                f"x0x connect {alice_id} --json --bootstrap {addr[blocked]}:12000 | tail -1"
            )
        )
        assert direct["path"] == "direct", direct
        assert direct["peer_id"] == alice_id, direct
        relayed = json.loads(
            bob.succeed(
                f"x0x connect {alice_id} --json --relay-only "
                f"--bootstrap {addr[blocked]}:12000 | tail -1"
            )
        )
        assert relayed["path"] == "relayed", relayed
        alice.succeed("systemctl stop x0x-listen")

    with subtest("two nodes down at once: the others see 3, then 5"):
        down = [mesh[2], mesh[3]]
        for m in down:
            m.succeed("systemctl stop x0x-bootstrap.service")
        wait_peers(others(*down), 3, 30)
        for m in down:
            m.succeed("systemctl start x0x-bootstrap.service")
        wait_peers(mesh, 5, 120)

    with subtest("a node whose network is blocked drops out, then comes back"):
        blocked.block()
        wait_peers(others(blocked), 4, 90)
        blocked.unblock()
        wait_peers(mesh, 5, 180)

    with subtest("systemctl stop on one node: the others see 4 within seconds"):
        stopped.succeed("systemctl stop x0x-bootstrap.service")
        wait_peers(others(stopped), 4, 10)

    with subtest("x0x status names the stopped node"):
        report = status(bob, 1)
        assert report["healthy"] is False, report
        gone = [n for n in report["nodes"] if n["addr"] == f"{addr[stopped]}:12000"]
        assert len(gone) == 1 and gone[0]["reachable"] is False, report
        for node in report["nodes"]:
            if node["addr"] != f"{addr[stopped]}:12000":
                assert node["reachable"] and node["peers"] == 4, node

    with subtest("and the stopped node comes back"):
        stopped.succeed("systemctl start x0x-bootstrap.service")
        wait_peers(mesh, 5, 120)
        status(alice, 0)
  '';
}

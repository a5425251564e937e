# Six bootstrap nodes built from the real host configurations (hosts/default.nix, the
# same module and inventory), with only the inventory's addresses remapped to the test
# network. Left out, because they cannot apply in a VM: each host's hardware file
# (disk, boot loader, platform) and network.nix (provider addressing); the test driver
# gives node N the address 192.168.1.N on eth1 instead. Added for the test only: curl,
# jq and a QUIC probe on every node.
{ self }:
{ lib, pkgs, ... }:
let
  inventory = builtins.fromTOML (builtins.readFile ../../hosts/inventory.toml);

  # The driver numbers the nodes 1..n in name order: node N is 192.168.1.N.
  names = lib.sort lib.lessThan (map (node: node.name) inventory.node);
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

  pythonName = builtins.replaceStrings [ "-" ] [ "_" ];
  pythonList = "[${lib.concatMapStringsSep ", " pythonName names}]";
in
{
  name = "x0x-bootstrap-mesh";

  nodes = lib.mapAttrs
    (_name: host: {
      imports = [ self.nixosModules.default host.node ];
      environment.systemPackages = [ pkgs.curl pkgs.jq quicProbe ];
    })
    hosts;

  # Exposure ceiling for `systemd-analyze security` (0.0 best .. 10.0 worst). What is
  # left open is what a public UDP service needs: network access (PrivateNetwork,
  # IPAddressDeny, AF_INET/AF_INET6) and the host's root directory.
  testScript = ''
    import re
    import time

    MAX_EXPOSURE = 2.0
    HEALTH = "curl -sf --max-time 3 http://127.0.0.1:12600/health"
    # All six, in name order: mesh[i] has the address 192.168.1.{i + 1}.
    mesh = ${pythonList}
    first, second, stopped, blocked = mesh[0], mesh[1], mesh[4], mesh[5]


    def others(node):
        return [m for m in mesh if m is not node]


    def wait_peers(nodes, count, seconds):
        """Every node in `nodes` reports `count` peers within `seconds` in all."""
        deadline = time.monotonic() + seconds
        for m in nodes:
            left = max(1, int(deadline - time.monotonic()))
            m.wait_until_succeeds(
                f"{HEALTH} | jq -e '.peers == {count}'", timeout=left
            )


    start_all()
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

    with subtest("QUIC port reachable from another node, health port not"):
        second.succeed("quic-probe 192.168.1.1 12000")
        second.fail("quic-probe 192.168.1.1 12001")
        first.succeed(HEALTH)
        second.fail("curl -sf --max-time 3 http://192.168.1.1:12600/health")

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

    with subtest("a node whose network is blocked drops out, then comes back"):
        blocked.block()
        wait_peers(others(blocked), 4, 90)
        blocked.unblock()
        wait_peers(mesh, 5, 180)

    with subtest("systemctl stop on one node: the others see 4 within seconds"):
        stopped.succeed("systemctl stop x0x-bootstrap.service")
        wait_peers(others(stopped), 4, 10)
        stopped.succeed("systemctl start x0x-bootstrap.service")
        wait_peers(mesh, 5, 120)
  '';
}

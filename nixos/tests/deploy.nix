# scripts/deploy.sh, run by a deployer VM against a target VM (as nixpkgs'
# nixos-rebuild-target-host test does for nixos-rebuild). The target is a bootstrap node
# built from the real host configuration (hosts/default.nix's `node` part, one-node
# inventory, no peers) with three specialisations, each a complete system the deployer
# deploys as a new generation:
#   good       a real change (log level, a marker file): deployed, healthy, confirmed;
#   unhealthy  a peer that does not exist: /health never becomes healthy, so deploy.sh
#              reverts it at once, over SSH;
#   cutoff     sshd's firewall port closed: after activation the deployer cannot connect
#              again, and the target's own rollback timer puts the previous generation back.
# The systems are built with the test (no builds and no network inside the VMs); the
# deployer deploys them with `deploy.sh --toplevel`, which runs the same steps as for a
# flake build after the build.
#
# Written for `nix flake check` on x86_64-linux with KVM; it has not run on our machines
# (no KVM, no nixpkgs): see docs/NIX.md.
{ self }:
{ lib, pkgs, ... }:
let
  sshKeys = import "${pkgs.path}/nixos/tests/ssh-keys.nix" pkgs;

  # deployer = 192.168.1.1, target = 192.168.1.2 (the driver numbers nodes in name order).
  inventory = {
    defaults = { quic_port = 12000; health_port = 12600; tcp_port = 443; };
    node = [{
      name = "target";
      location = "vm";
      provider = "Hetzner";
      ipv4 = "192.168.1.2";
      quic_port = 12000;
      ipv4_prefix_length = 24;
      ipv4_gateway = "192.168.1.254";
    }];
  };
  hosts = import ../../hosts { inherit inventory; };

  marker = text: { environment.etc."x0x-generation".text = text; };
in
{
  name = "x0x-deploy";

  nodes = {
    deployer = { nodes, ... }: {
      environment.systemPackages = [ pkgs.python3 ];
      # Every system it deploys is in its store already: nothing to build or fetch.
      virtualisation.additionalPaths = [ nodes.target.system.build.toplevel ];
      nix.settings.substituters = lib.mkForce [ ];
      nix.settings.experimental-features = [ "nix-command" ];
      virtualisation.memorySize = 1536;
    };

    target = { lib, ... }: {
      imports = [ self.nixosModules.default hosts.target.node (marker (lib.mkDefault "base")) ];
      users.users.root.openssh.authorizedKeys.keys = [ sshKeys.snakeOilPublicKey ];
      nix.settings.trusted-users = [ "root" ];
      specialisation = {
        good.configuration = lib.mkMerge [
          (marker "good")
          { services.x0x-bootstrap.settings.log.level = "debug"; }
        ];
        unhealthy.configuration = lib.mkMerge [
          (marker "unhealthy")
          # TEST-NET-1: never answers, so the node never reports all its peers.
          { services.x0x-bootstrap.settings.peers = lib.mkForce [ "192.0.2.1:12000" ]; }
        ];
        cutoff.configuration = lib.mkMerge [
          (marker "cutoff")
          { services.openssh.openFirewall = lib.mkForce false; }
        ];
      };
    };
  };

  testScript = { nodes, ... }:
    let
      system = nodes.target.system.build.toplevel;
      deploy = "${self}/scripts/deploy.sh --target root@target --authorized-keys /root/keys";
    in
    ''
      import json

      HEALTH = "curl -sf --max-time 3 http://127.0.0.1:12600/health"
      BASE = "${system}"
      GOOD = "${system}/specialisation/good"
      UNHEALTHY = "${system}/specialisation/unhealthy"
      CUTOFF = "${system}/specialisation/cutoff"


      def running(machine):
          return machine.succeed("readlink -f /run/current-system").strip()


      def boot_default(machine):
          return machine.succeed("readlink -f /nix/var/nix/profiles/system").strip()


      def store(path):
          return deployer.succeed(f"readlink -f {path}").strip()


      start_all()
      target.wait_for_unit("x0x-bootstrap.service")
      target.wait_for_unit("sshd.service")
      deployer.wait_for_unit("multi-user.target")
      deployer.succeed(
          "install -Dm 600 ${sshKeys.snakeOilPrivateKey} /root/.ssh/id_ecdsa",
          "printf 'StrictHostKeyChecking no\\nUserKnownHostsFile /dev/null\\n' > /root/.ssh/config",
          "echo '${sshKeys.snakeOilPublicKey}' > /root/keys",
      )
      deployer.wait_until_succeeds("ssh root@target true", timeout=60)
      peer_id = json.loads(target.succeed(HEALTH))["peer_id"]
      assert running(target) == BASE

      with subtest("deploy.sh refuses the real fleet: hosts/authorized_keys lists no key"):
          rc, out = deployer.execute("${self}/scripts/deploy.sh --print-plan saorsa-2 2>&1")
          assert rc == 2 and "no SSH authorized key configured" in out, out

      with subtest("a good generation: tested, healthy, made the boot default, confirmed"):
          deployer.succeed(f"${deploy} --toplevel {GOOD} --rollback-after 300 --health-timeout 60 target >&2")
          good = store(GOOD)
          assert running(target) == good, running(target)
          assert boot_default(target) == good, boot_default(target)
          target.succeed("grep -qx good /etc/x0x-generation")
          target.fail("systemctl is-active x0x-deploy-rollback.timer")
          assert json.loads(target.succeed(HEALTH))["peer_id"] == peer_id, "node key lost"

      with subtest("an unhealthy generation is reverted at once"):
          rc, _ = deployer.execute(
              f"${deploy} --toplevel {UNHEALTHY} --rollback-after 300 --health-timeout 30 target >&2"
          )
          assert rc == 1, f"deploy.sh exited {rc}"
          assert running(target) == store(GOOD), running(target)
          assert boot_default(target) == store(GOOD), boot_default(target)
          target.succeed("grep -qx good /etc/x0x-generation")
          target.fail("systemctl is-active x0x-deploy-rollback.timer")

      with subtest("a generation that locks SSH out: the target's own timer reverts it"):
          rc, _ = deployer.execute(
              f"${deploy} --toplevel {CUTOFF} --rollback-after 90 --health-timeout 20 target >&2"
          )
          assert rc == 1, f"deploy.sh exited {rc}"
          target.succeed("journalctl -u x0x-deploy-rollback.service | grep -q 'rolled back to'")
          assert running(target) == store(GOOD), running(target)
          assert boot_default(target) == store(GOOD), boot_default(target)
          deployer.succeed("ssh root@target true")

      with subtest("the node key survived all of it"):
          target.wait_until_succeeds(f"{HEALTH} | grep -q {peer_id}")
    '';
}

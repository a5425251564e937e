# The x0x-bootstrap units as the module generates them, for scripts/check-systemd.sh:
#   nix-instantiate --eval --strict --json scripts/nix/render-unit.nix \
#     --arg lib 'import <nixpkgs.lib>/lib' --arg harness <nixos-eval>/eval.nix \
#     --argstr variant single|identity|tcp|mesh
# The package is a stand-in whose store path is /usr/local, so ExecStart names
# /usr/local/bin/x0x-bootstrap, where the script installs the real binary; the config
# file's store path is the one other thing the script substitutes (with the TOML it
# writes from `settings`). Everything else is the module's own output.
#   single    one node, the module's defaults, no peers
#   identity  the same with identityFile = /etc/x0x/node-key (LoadCredential)
#   tcp       the same with the TCP relay socket (tcp.enable, port 443)
#   mesh      the six hosts' `node` parts (hosts/default.nix, hosts/common.nix) with the
#             inventory's addresses remapped to 10.77.0.1-6, as the VM test does
{ lib, harness, variant }:
let
  pkg = {
    type = "derivation";
    name = "x0x-bootstrap-lab";
    outPath = "/usr/local";
    drvPath = "/nix/store/00000000000000000000000000000000-x0x-bootstrap-lab.drv";
    meta.mainProgram = "x0x-bootstrap";
  };
  module = import ../../nixos/module.nix { x0xPackages.x86_64-linux.x0x-bootstrap = pkg; };
  eval = modules: import harness { inherit lib; modules = [ module ] ++ modules; };

  unitOf = r: {
    inherit (r) failed warnings;
    settings = r.services.x0x-bootstrap.settings;
    service = r.systemd.services.x0x-bootstrap;
    socket = r.systemd.sockets.x0x-bootstrap or null;
    users = lib.mapAttrs (_: u: { isSystemUser = u.isSystemUser or false; group = u.group or null; description = u.description or ""; })
      (lib.filterAttrs (name: _: name != "root") r.users.users);
    groups = builtins.attrNames r.users.groups;
  };

  single = extra: unitOf (eval [{ services.x0x-bootstrap = { enable = true; } // extra; }]);

  inventory = builtins.fromTOML (builtins.readFile ../../hosts/inventory.toml);
  labInventory = inventory // {
    node = lib.imap1 (i: node: node // { ipv4 = "10.77.0.${toString i}"; }) inventory.node;
  };
  hosts = import ../../hosts { inventory = labInventory; };
  labKey = { users.users.root.openssh.authorizedKeys.keys = lib.mkForce [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUnitLabOnlyNoOneLogsInToTheseContainers000000 lab" ]; };
in
{
  single = single { };
  identity = single { identityFile = "/etc/x0x/node-key"; };
  tcp = single { tcp.enable = true; };
  mesh = builtins.mapAttrs (_: host: unitOf (eval [ host.node labKey ])) hosts;
}.${variant}

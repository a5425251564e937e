# The host-building function: the inventory and the adopted machine facts in, the parts of
# each node's NixOS configuration out. flake.nix joins both parts into
# nixosConfigurations; the VM tests (nixos/tests/*.nix) call this with the addresses
# remapped to the test network and take only `node`, since disks and provider
# addressing cannot apply in a VM.
{ inventory ? builtins.fromTOML (builtins.readFile ./inventory.toml)
, factsDir ? ./facts
  # name -> facts; scripts/nix/check-module.nix substitutes the adopt test cases' facts.
, factsFor ? name: builtins.fromJSON (builtins.readFile (factsDir + "/${name}.json"))
}:
builtins.mapAttrs
  (name: x0xNode: {
    # The x0x service, its peers, SSH and its lock-out check.
    node = {
      imports = [ ./common.nix ];
      _module.args = { inherit x0xNode; };
    };
    # What the machine is, from hosts/facts/<name>.json (scripts/adopt-host.sh): platform,
    # disks, boot loader, interfaces, addresses, resolvers, state version; plus the
    # node's own file for anything particular to it. The facts are plain data, handed to
    # the modules as a function argument (not _module.args), so that definitions keyed
    # by them (the EFI mount point) never depend on the module system's own arguments.
    machine =
      let
        facts = factsFor name;
        located = file: module: { _file = file; imports = [ module ]; };
      in
      {
        imports = [
          (located ./hardware.nix (import ./hardware.nix facts))
          (located ./network.nix (import ./network.nix { inherit facts x0xNode; }))
          ./${name}.nix
        ];
      };
  })
  (import ./fleet.nix inventory)

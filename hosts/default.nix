# The host-building function: the inventory in, the parts of each node's NixOS
# configuration out. flake.nix joins all three parts into nixosConfigurations; the VM
# test (nixos/tests/mesh.nix) calls this with the addresses remapped to the test
# network and takes only `node`, since disks and provider addressing cannot apply in a
# VM.
{ inventory ? builtins.fromTOML (builtins.readFile ./inventory.toml) }:
builtins.mapAttrs
  (name: x0xNode: {
    # The x0x service, its peers, SSH and the qemu-guest profile.
    node = {
      imports = [ ./common.nix ];
      _module.args = { inherit x0xNode; };
    };
    # Static addressing as the provider hands it out (reads the same x0xNode argument).
    network = ./network.nix;
    # What the machine itself is: platform, disk, boot loader, state version.
    hardware = ./${name}.nix;
  })
  (import ./fleet.nix inventory)

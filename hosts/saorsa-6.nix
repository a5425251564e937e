# saorsa-6: Hetzner Cloud, Helsinki.
# Its address, peers and addressing come from inventory.toml; this file holds only what
# the machine itself is. The disk layout is the one nixos-infect leaves on a Hetzner Cloud
# VM: check it against the node's own nixos-generate-config output before deploying.
{
  nixpkgs.hostPlatform = "x86_64-linux";
  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = {
    device = "/dev/sda1";
    fsType = "ext4";
  };
  system.stateVersion = "26.05";
}

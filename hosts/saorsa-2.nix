# saorsa-2: DigitalOcean, NYC.
# Its address, peers and addressing come from inventory.toml; this file holds only what
# the machine itself is. The disk layout is the one nixos-infect leaves on a DigitalOcean
# VM: check it against the node's own nixos-generate-config output before deploying.
{
  nixpkgs.hostPlatform = "x86_64-linux";
  boot.loader.grub.device = "/dev/vda";
  fileSystems."/" = {
    device = "/dev/vda1";
    fsType = "ext4";
  };
  system.stateVersion = "26.05";
}

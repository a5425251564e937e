# The machine, from its facts (hosts/facts/<name>.json, written by scripts/adopt-host.sh
# from the running machine): platform, boot loader, root and EFI file systems by UUID
# (or label), swap, state version. Facts that were never adopted hold the provider's
# usual layout, marked as unconfirmed: the build warns, and scripts/deploy.sh refuses.
facts:
{ lib, modulesPath, ... }:
let
  adopted = facts.adopted != null;
  uefi = facts.firmware == "uefi";

  # A file system by its UUID, else its label; the kernel name only in unadopted facts.
  stableDevice = fs:
    if fs.uuid or null != null then "/dev/disk/by-uuid/${fs.uuid}"
    else if fs.label or null != null then "/dev/disk/by-label/${fs.label}"
    else fs.device;
in
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  nixpkgs.hostPlatform = facts.system;

  # What nixos-generate-config lists for a KVM guest, plus NVMe (newer instance types).
  boot.initrd.availableKernelModules = [ "ahci" "ata_piix" "nvme" "sd_mod" "sr_mod" "uhci_hcd" "xhci_pci" ];

  boot.loader.grub =
    if uefi then {
      efiSupport = true;
      # The firmware's boot entries are left alone (no efivars writes on a VPS): GRUB is
      # installed at the removable-media path the firmware always tries.
      efiInstallAsRemovable = true;
      device = "nodev";
    } else {
      device = facts.boot.grub_device;
    };
  boot.loader.efi.efiSysMountPoint = lib.mkIf uefi facts.esp.mount;

  fileSystems = {
    "/" = {
      device = stableDevice facts.root;
      fsType = facts.root.fstype;
    };
  } // lib.optionalAttrs uefi {
    ${facts.esp.mount} = {
      device = stableDevice facts.esp;
      fsType = facts.esp.fstype;
      options = [ "fmask=0077" "dmask=0077" ];
    };
  };

  swapDevices = map (swap: { device = stableDevice swap; }) facts.swap;

  # A machine adopted before its first install has none yet: it gets the release it is
  # installed with (scripts/first-install.sh writes the same into /etc/nixos).
  system.stateVersion = if facts.state_version != null then facts.state_version else lib.trivial.release;

  warnings = lib.optional (!adopted) ''
    hosts/facts/${facts.name}.json holds unconfirmed defaults (disk ${facts.root.device},
    ${facts.firmware} boot, no interface MACs), never read off the machine. Run
    scripts/adopt-host.sh ${facts.name} before deploying; scripts/deploy.sh refuses until then.
  '';
}

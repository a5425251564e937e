# What every bootstrap node shares. The node's own facts (name, ports, peers) come from
# hosts/inventory.toml through hosts/default.nix as the `x0xNode` argument.
{ lib, modulesPath, x0xNode, ... }:
let
  # One OpenSSH public key per line; lines starting with '#' are comments.
  authorizedKeys = builtins.filter (line: line != "" && !lib.hasPrefix "#" line) (
    lib.splitString "\n" (builtins.readFile ./authorized_keys)
  );
in
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  networking.hostName = x0xNode.name;
  networking.firewall.enable = true;

  services.x0x-bootstrap = {
    enable = true;
    openFirewall = true;
    settings = {
      listen = "[::]:${toString x0xNode.quic_port}";
      inherit (x0xNode) peers;
      health.listen = "127.0.0.1:${toString x0xNode.health_port}";
    };
  };

  services.openssh = {
    enable = true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      PermitRootLogin = "prohibit-password";
    };
  };
  users.users.root.openssh.authorizedKeys.keys = authorizedKeys;

  warnings = lib.optional (authorizedKeys == [ ]) ''
    hosts/authorized_keys lists no SSH key: with password logins off, deploying this
    configuration to ${x0xNode.name} leaves only the provider's console to log in.
  '';
}

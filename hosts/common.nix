# What every bootstrap node shares. The node's own facts (name, ports, peers) come from
# hosts/inventory.toml through hosts/default.nix as the `x0xNode` argument.
{ config, lib, pkgs, x0xNode, ... }:
let
  # One OpenSSH public key per line; lines starting with '#' are comments.
  authorizedKeys = builtins.filter (line: line != "" && !lib.hasPrefix "#" line) (
    map lib.trim (lib.splitString "\n" (builtins.readFile ./authorized_keys))
  );

  root = config.users.users.root;
  rootKeys = (root.openssh.authorizedKeys.keys or [ ]) ++ (root.openssh.authorizedKeys.keyFiles or [ ]);
in
{
  networking.hostName = x0xNode.name;
  networking.firewall.enable = true;

  # scripts/deploy.sh and the operators read /health over SSH with curl.
  environment.systemPackages = [ pkgs.curl ];

  services.x0x-bootstrap = {
    enable = true;
    openFirewall = true;
    port = x0xNode.quic_port;
    health.port = x0xNode.health_port;
    # The TCP relay for agents whose networks block UDP (issue 11), on the inventory's
    # tcp_port (443): systemd binds it and hands the socket over, openFirewall opens it.
    tcp = {
      enable = true;
      port = x0xNode.tcp_port;
    };
    settings.peers = x0xNode.peers;
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

  # users.mutableUsers stays true (the NixOS default) on purpose: a root password set
  # with `passwd` on the provider's console survives every switch, and is the way back
  # in if SSH ever fails. With mutableUsers = false NixOS would drop it, and its own
  # lock-out check would only cover passwords, not SSH keys.
  #
  # Password logins over SSH are off, so without a root key nobody (and no deploy) can
  # log in after this configuration is activated: refuse to build it at all.
  assertions = [
    {
      assertion = rootKeys != [ ];
      message = ''
        ${x0xNode.name}: no SSH key for root (hosts/authorized_keys lists none). Password
        logins are off, so activating this configuration would leave only the provider's
        console. Add the operators' public keys to hosts/authorized_keys.
      '';
    }
  ];
}

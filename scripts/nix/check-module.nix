# The module and the hosts, evaluated with nixpkgs' real lib through the nixos-eval harness
# (../shared/tools/nixos-eval: real lib, the NixOS options these modules set stubbed, any
# other option accepted). scripts/check-nix.sh runs
#   nix-instantiate --eval --strict --json scripts/nix/check-module.nix \
#     --arg lib 'import <nixpkgs.lib>/lib' --arg harness <nixos-eval>/eval.nix
# Every test is `name = bool`; the result lists the names of the failed ones, so the
# script prints them. What the harness cannot show (real NixOS option declarations, the
# rendered unit file, systemd itself) is checked elsewhere: modern-nix (flake wiring),
# scripts/check-systemd.sh (the unit under real systemd), the VM tests (written).
{ lib, harness }:
let
  stub = name: mainProgram: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
    drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
    meta = { inherit mainProgram; };
  };
  x0xPackages.x86_64-linux = {
    x0x-bootstrap = stub "x0x-bootstrap-0.1.0" "x0x-bootstrap";
    x0x-cli = stub "x0x-cli-0.1.0" "x0x";
  };
  module = import ../../nixos/module.nix { inherit x0xPackages; };

  eval = modules: import harness { inherit lib; modules = [ module ] ++ modules; };
  node = cfg: eval [{ services.x0x-bootstrap = { enable = true; } // cfg; }];
  settingsOf = r: r.services.x0x-bootstrap.settings;
  unit = r: r.systemd.services.x0x-bootstrap;
  svc = r: (unit r).serviceConfig;
  # The failed assertions' messages, with line breaks and indentation folded to spaces.
  fails = r: lib.concatStringsSep " " (builtins.filter (w: w != "")
    (lib.splitString " " (builtins.replaceStrings [ "\n" ] [ " " ] (lib.concatStringsSep " " r.failed))));
  failsWith = text: r: lib.hasInfix text (fails r);
  rejected = value: !(builtins.tryEval (builtins.deepSeq value value)).success;

  # What the harness does not return (file systems, boot loader, ...), copied by a test-only
  # module into an attribute of `networking`, which it does return.
  probe = { config, ... }: {
    networking.x0xProbe = {
      inherit (config) fileSystems swapDevices;
      loader = config.boot.loader;
      stateVersion = config.system.stateVersion;
      platform = config.nixpkgs.hostPlatform;
      packages = map (p: p.name) config.environment.systemPackages;
    };
  };

  realInventory = builtins.fromTOML (builtins.readFile ../../hosts/inventory.toml);
  testKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0xCheckModuleOnlyNotAnOperatorKey000000 check-module";
  withKey = { users.users.root.openssh.authorizedKeys.keys = lib.mkForce [ testKey ]; };
  noKey = { users.users.root.openssh.authorizedKeys.keys = lib.mkForce [ ]; };

  host = { inventory ? realInventory, factsFor ? null, name, extra ? [ ] }:
    let
      hosts = import ../../hosts ({ inherit inventory; } // lib.optionalAttrs (factsFor != null) { inherit factsFor; });
    in
    eval ([ hosts.${name}.node hosts.${name}.machine probe ] ++ extra);

  # The adopt test cases: the facts adopt_facts.py must produce, and an inventory entry
  # that agrees with them (its ipv4 and gateway are the machine's).
  adoptCase = case:
    let
      dir = ../testdata/adopt + "/${case}";
      facts = builtins.fromJSON (builtins.readFile (dir + "/expected.json"));
      primary = builtins.head facts.interfaces;
      v4 = builtins.head (builtins.filter (a: !lib.hasInfix ":" a) primary.addresses);
      gw4 = (builtins.head (builtins.filter (r: !lib.hasInfix ":" r.gateway) facts.routes)).gateway;
      entry = {
        inherit (facts) name;
        location = "test";
        provider = "Hetzner";
        ipv4 = builtins.head (lib.splitString "/" v4);
        quic_port = 12000;
        ipv4_prefix_length = lib.toInt (lib.last (lib.splitString "/" v4));
        ipv4_gateway = gw4;
      };
      inventory = realInventory // {
        node = map (n: if n.name == facts.name then entry else n) realInventory.node;
      };
    in
    { inherit facts entry inventory; r = host { inherit inventory; factsFor = _: facts; inherit (facts) name; extra = [ withKey ]; }; };

  do = adoptCase "digitalocean-ubuntu-bios";
  hetzner = adoptCase "hetzner-ubuntu-bios";
  vultr = adoptCase "vultr-debian-uefi";
  infected = adoptCase "hetzner-nixos-after-infect";
  nets = r: r.networking.x0xProbe // { networks = r.systemd.network.networks; };

  defaults = node { };
  tcp = node { tcp.enable = true; openFirewall = true; };

  # nixpkgs' own declaration of these two sysctls (nixos/modules/config/sysctl.nix): the
  # highest definition wins. Rewritten here, to check that the module's plain definitions
  # merge with it as nixpkgs' own modules' do.
  sysctlMerge = others:
    let
      highest = lib.types.ints.unsigned // {
        merge = _loc: defs: lib.foldl (a: b: if b.value == null then null else lib.max a b.value) 0 (lib.filterOverrides defs);
      };
      opt = lib.mkOption { type = lib.types.nullOr highest; default = null; };
      stubs = {
        options.boot.kernel.sysctl = lib.mkOption {
          type = lib.types.submodule {
            freeformType = lib.types.attrsOf lib.types.anything;
            options."net.core.rmem_max" = opt;
            options."net.core.wmem_max" = opt;
          };
          default = { };
        };
        # Declared (not free-form at the root), so that the module's mkIf needs no
        # look at `config` to find out which options it defines.
        options.assertions = lib.mkOption { type = lib.types.listOf lib.types.anything; };
        options.users = lib.mkOption { type = lib.types.attrsOf lib.types.anything; };
        options.networking = lib.mkOption { type = lib.types.attrsOf lib.types.anything; };
        options.systemd = lib.mkOption { type = lib.types.attrsOf lib.types.anything; };
        config._module.args.pkgs = {
          formats.toml = _: { type = lib.types.attrsOf lib.types.anything; generate = n: _: stub n "x"; };
          runCommand = n: _: _: stub n "x";
          stdenv.hostPlatform.system = "x86_64-linux";
        };
      };
    in
    (lib.evalModules {
      modules = [ module stubs { services.x0x-bootstrap.enable = true; } ]
        ++ map (v: { boot.kernel.sysctl."net.core.rmem_max" = v; boot.kernel.sysctl."net.core.wmem_max" = v; }) others;
    }).config.boot.kernel.sysctl;

  tests = {
    "defaults: listen [::]:12000, health 127.0.0.1:12600, [tcp] listen = \"\" (off), peers []" =
      let s = settingsOf defaults; in
      s.listen == "[::]:12000" && s.health.listen == "127.0.0.1:12600" && s.tcp.listen == "" && s.peers == [ ] && defaults.failed == [ ];
    "package defaults to the flake's x0x-bootstrap (mkPackageOption's default exists), run by its mainProgram" =
      lib.hasPrefix "/nix/store/00000000000000000000000000000000-x0x-bootstrap-0.1.0/bin/x0x-bootstrap --config " (svc defaults).ExecStart;
    "typed address and port: 0.0.0.0 and 12001 give listen 0.0.0.0:12001" =
      (settingsOf (node { address = "0.0.0.0"; port = 12001; })).listen == "0.0.0.0:12001";
    "an IPv6 address is bracketed" =
      (settingsOf (node { address = "2001:db8::7"; })).listen == "[2001:db8::7]:12000";
    "a host name is not an address" = rejected (settingsOf (node { address = "boot.example.org"; })).listen;
    "a port out of range is rejected" = rejected (settingsOf (node { port = 70000; })).listen;
    "health address and port are typed" =
      (settingsOf (node { health = { address = "::1"; port = 9000; }; })).health.listen == "[::1]:9000";
    "openFirewall opens the QUIC port (UDP) only" =
      let r = node { openFirewall = true; port = 12345; }; in
      r.firewall.allowedUDPPorts == [ 12345 ] && r.firewall.allowedTCPPorts == [ ];
    "no openFirewall: nothing opened" =
      defaults.firewall.allowedUDPPorts == [ ] && defaults.firewall.allowedTCPPorts == [ ];
    "tcp off: no socket unit" = !(defaults.systemd ? sockets) || !(defaults.systemd.sockets ? x0x-bootstrap);
    "tcp on: [tcp] listen = [::]:443, TCP 443 opened" =
      (settingsOf tcp).tcp.listen == "[::]:443" && tcp.firewall.allowedTCPPorts == [ 443 ] && tcp.firewall.allowedUDPPorts == [ 12000 ];
    "tcp on: socket unit ListenStream [::]:443, FileDescriptorName=tcp, Service=x0x-bootstrap.service, dual stack" =
      let s = tcp.systemd.sockets.x0x-bootstrap; in
      s.listenStreams == [ "[::]:443" ] && s.socketConfig.FileDescriptorName == "tcp"
      && s.socketConfig.Service == "x0x-bootstrap.service" && s.socketConfig.BindIPv6Only == "both"
      && s.wantedBy == [ "sockets.target" ];
    "tcp on: the service wants and is ordered after its socket, and still has no capability" =
      let u = unit tcp; in
      builtins.elem "x0x-bootstrap.socket" u.wants && builtins.elem "x0x-bootstrap.socket" u.after
      && (svc tcp).CapabilityBoundingSet == [ "" ] && (svc tcp).AmbientCapabilities == [ "" ];
    "tcp.port = 8443 moves socket, setting and firewall together" =
      let r = node { tcp = { enable = true; port = 8443; address = "0.0.0.0"; }; openFirewall = true; }; in
      r.systemd.sockets.x0x-bootstrap.listenStreams == [ "0.0.0.0:8443" ] && (settingsOf r).tcp.listen == "0.0.0.0:8443"
      && r.firewall.allowedTCPPorts == [ 8443 ];
    "checkConfig (default): the unit reads the file checked by x0x-bootstrap --check" =
      lib.hasInfix "-x0x-bootstrap-checked.toml" (svc defaults).ExecStart;
    "checkConfig = false: the unit reads the unchecked file (cross builds)" =
      let e = (svc (node { checkConfig = false; })).ExecStart; in
      lib.hasInfix "-x0x-bootstrap.toml" e && !lib.hasInfix "checked" e;
    "default user and group x0x are created and used" =
      defaults.users.users ? x0x && defaults.users.users.x0x.isSystemUser && defaults.users.users.x0x.group == "x0x"
      && defaults.users.groups ? x0x && (svc defaults).User == "x0x" && (svc defaults).Group == "x0x";
    "another user: used, not created" =
      let r = node { user = "svc"; group = "svcgrp"; }; in
      (svc r).User == "svc" && (svc r).Group == "svcgrp" && !(r.users.users ? x0x) && !(r.users.users ? svc) && !(r.users.groups ? x0x);
    "identityFile: LoadCredential node-key, --key-file %d/node-key" =
      let s = svc (node { identityFile = "/run/keys/x0x.pem"; }); in
      s.LoadCredential == [ "node-key:/run/keys/x0x.pem" ] && lib.hasSuffix " --key-file %d/node-key" s.ExecStart;
    "no identityFile: no credential, key in the state directory" =
      (svc defaults).LoadCredential == [ ] && !lib.hasInfix "--key-file" (svc defaults).ExecStart
      && (svc defaults).StateDirectory == "x0x-bootstrap" && (svc defaults).StateDirectoryMode == "0700";
    "identityFile in the store is rejected" = rejected (svc (node { identityFile = /nix/store/abc-key; })).LoadCredential;
    "state_dir outside /var/lib is rejected" = rejected (settingsOf (node { settings.state_dir = "/srv/x0x"; })).state_dir;
    "assertion: a non-loopback health address" =
      failsWith "is not a loopback address" (node { health.address = "0.0.0.0"; });
    "health.allow_remote permits it" =
      (node { health.address = "0.0.0.0"; settings.health.allow_remote = true; }).failed == [ ];
    "assertion: key material in settings" =
      failsWith "holds key material at limits.private_key" (node { settings.limits.private_key = "x"; })
      && failsWith "holds key material at transport" (node { settings.transport.note = "-----BEGIN PRIVATE KEY-----"; });
    "assertion: key_file in the store" = failsWith "must be a path string outside the Nix store" (node { settings.key_file = "/nix/store/abc-k"; });
    "assertion: identityFile and key_file together" =
      failsWith "not both" (node { identityFile = "/run/keys/a"; settings.key_file = "/var/lib/x0x-bootstrap/b"; });
    "free-form settings pass through (issue 12's [mesh], limits, transport)" =
      let s = settingsOf (node { settings = { mesh = { keepalive_ms = 500; idle_timeout_ms = 2500; }; limits.max_connections = 4096; }; }); in
      s.mesh == { keepalive_ms = 500; idle_timeout_ms = 2500; } && s.limits.max_connections == 4096;
    "a typo in a typed setting is an error" = rejected (settingsOf (node { settings.log.format = "xml"; })).log.format;
    "sysctls follow transport.udp_buffer_bytes (7 MiB by default)" =
      defaults.sysctl."net.core.rmem_max" == 7340032 && defaults.sysctl."net.core.wmem_max" == 7340032
      && (node { settings.transport.udp_buffer_bytes = 16777216; }).sysctl."net.core.rmem_max" == 16777216;
    "sysctls merge as nixpkgs' do: the highest of all definitions wins (not mkDefault)" =
      (sysctlMerge [ 33554432 ])."net.core.rmem_max" == 33554432
      && (sysctlMerge [ 1048576 ])."net.core.rmem_max" == 7340032
      && (sysctlMerge [ 1048576 67108864 ])."net.core.wmem_max" == 67108864
      && (sysctlMerge [ ])."net.core.rmem_max" == 7340032;
    "hardening directives as documented" =
      let s = svc defaults; in
      s.Type == "notify" && s.NotifyAccess == "main" && s.NoNewPrivileges && s.MemoryDenyWriteExecute
      && s.PrivateUsers && s.ProtectSystem == "strict" && s.ProtectHome && s.PrivateDevices && s.ProtectProc == "invisible"
      && s.RestrictAddressFamilies == [ "AF_INET" "AF_INET6" "AF_UNIX" ]
      && s.SystemCallFilter == [ "@system-service" "~@privileged" "~@resources" ] && s.UMask == "0077";

    # --- hosts ---
    "host: no root key fails evaluation (the lock-out check)" =
      failsWith "no SSH key for root" (host { name = "saorsa-2"; extra = [ noKey ]; });
    "host: with a root key, no failed assertion" = (host { name = "saorsa-2"; extra = [ withKey ]; }).failed == [ ];
    "host: the committed hosts/authorized_keys gives root exactly its keys" =
      let
        keys = builtins.filter (l: l != "" && !lib.hasPrefix "#" l) (map lib.trim (lib.splitString "\n" (builtins.readFile ../../hosts/authorized_keys)));
        r = host { name = "saorsa-2"; };
      in
      (keys == [ ]) == failsWith "no SSH key for root" r;
    "host: services, ports and peers from the inventory (5 peers, not itself)" =
      let r = host { name = "saorsa-6"; extra = [ withKey ]; }; s = settingsOf r; in
      s.listen == "[::]:12000" && s.health.listen == "127.0.0.1:12600" && builtins.length s.peers == 5
      && !builtins.elem "65.21.157.229:12000" s.peers && builtins.elem "142.93.199.50:12000" s.peers
      && r.firewall.allowedUDPPorts == [ 12000 ] && r.hostName == "saorsa-6";
    "host: a peer_id in the inventory pins that node in every other node's peers" =
      let
        id = "ab" + lib.concatStrings (lib.genList (_: "cd") 31);
        inv = realInventory // { node = map (n: if n.name == "saorsa-3" then n // { peer_id = id; } else n) realInventory.node; };
        s = settingsOf (host { inventory = inv; name = "saorsa-8"; extra = [ withKey ]; });
      in
      builtins.elem "${id}@147.182.234.192:12000" s.peers && builtins.elem "142.93.199.50:12000" s.peers;
    "host: the TCP relay on the inventory's tcp_port: socket unit, [tcp] listen, TCP and UDP opened" =
      let r = host { name = "saorsa-7"; extra = [ withKey ]; }; in
      r.systemd.sockets.x0x-bootstrap.listenStreams == [ "[::]:443" ] && (settingsOf r).tcp.listen == "[::]:443"
      && r.firewall.allowedTCPPorts == [ 443 ] && r.firewall.allowedUDPPorts == [ 12000 ];
    "host: curl for reading /health over SSH" =
      builtins.elem "curl" (host { name = "saorsa-2"; extra = [ withKey ]; }).networking.x0xProbe.packages;
    "host: sshd keys only, no passwords" =
      let o = (host { name = "saorsa-2"; extra = [ withKey ]; }).services.openssh.settings; in
      !o.PasswordAuthentication && !o.KbdInteractiveAuthentication && o.PermitRootLogin == "prohibit-password";
    "host unadopted: inventory addresses on eth0, Hetzner's on-link gateway, a warning" =
      let r = host { name = "saorsa-6"; extra = [ withKey ]; }; n = r.systemd.network.networks."10-eth0"; in
      n.matchConfig == { Name = "eth0"; } && n.address == [ "65.21.157.229/32" ]
      && n.routes == [{ Gateway = "172.31.1.1"; GatewayOnLink = true; }]
      && !r.networking.usePredictableInterfaceNames && r.networking.useNetworkd && !r.networking.useDHCP
      && lib.any (lib.hasInfix "unconfirmed defaults") r.warnings
      && r.networking.nameservers == [ "185.12.64.1" "185.12.64.2" ];
    "host unadopted DigitalOcean: /20 with an ordinary gateway route" =
      let n = (host { name = "saorsa-2"; extra = [ withKey ]; }).systemd.network.networks."10-eth0"; in
      n.address == [ "142.93.199.50/20" ] && n.routes == [{ Gateway = "142.93.192.1"; }];
    "host unadopted: root and GRUB as the unconfirmed facts say, stateVersion 26.05" =
      let p = (host { name = "saorsa-6"; extra = [ withKey ]; }).networking.x0xProbe; in
      p.fileSystems."/".device == "/dev/sda1" && p.loader.grub.device == "/dev/sda" && p.stateVersion == "26.05";
    "host unadopted with an inventory ipv6 (no gateway): address on eth0, router advertisements on" =
      let
        inv = realInventory // { node = map (n: if n.name == "saorsa-8" then n // { ipv6 = "2001:db8:8::1"; } else n) realInventory.node; };
        n = (host { inventory = inv; name = "saorsa-8"; extra = [ withKey ]; }).systemd.network.networks."10-eth0";
      in
      n.address == [ "149.28.156.231/23" "2001:db8:8::1/64" ] && n.networkConfig.IPv6AcceptRA;
    "adopted DigitalOcean: both NICs by MAC, anchor and IPv6 addresses, default routes on eth0 only" =
      let n = (nets do.r).networks; in
      n."10-eth0".matchConfig == { MACAddress = "d6:4e:2a:91:7c:10"; }
      && n."10-eth0".address == [ "203.0.113.50/20" "10.10.0.5/16" "2001:db8:400:d0::1b:e001/64" ]
      && n."10-eth0".routes == [{ Gateway = "203.0.113.1"; } { Gateway = "2001:db8:400:d0::1"; }]
      && n."10-eth1".matchConfig == { MACAddress = "8a:1f:c4:02:5e:33"; } && n."10-eth1".routes == [ ]
      && n."10-eth0".linkConfig.RequiredForOnline == "routable" && n."10-eth1".linkConfig.RequiredForOnline == "no"
      && do.r.failed == [ ];
    "adopted DigitalOcean: root by UUID, GRUB on /dev/vda, stateVersion = the release (not NixOS yet)" =
      let p = (nets do.r); in
      p.fileSystems."/".device == "/dev/disk/by-uuid/8f3c2a71-5d0e-4b8a-9c61-2e7f40d1a9b3"
      && p.loader.grub.device == "/dev/vda" && p.stateVersion == lib.trivial.release && !(do.r.warnings != [ ] && lib.any (lib.hasInfix "unconfirmed") do.r.warnings);
    "adopted Hetzner: /32 with 172.31.1.1 on-link, IPv6 via fe80::1, GRUB on the disk by-id" =
      let p = nets hetzner.r; n = p.networks."10-eth0"; in
      n.address == [ "198.51.100.20/32" "2001:db8:c012:1f3::1/64" ]
      && n.routes == [{ Gateway = "172.31.1.1"; GatewayOnLink = true; } { Gateway = "fe80::1"; }]
      && !n.networkConfig.IPv6AcceptRA && p.loader.grub.device == "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_50125847"
      && hetzner.r.networking.nameservers == [ "185.12.64.2" "185.12.64.1" "2a01:4ff:ff00::add:1" ];
    "adopted Vultr UEFI: GRUB for EFI (removable path), ESP by UUID at /boot/efi, IPv6 from RA" =
      let p = nets vultr.r; n = p.networks."10-enp1s0"; in
      p.loader.grub.efiSupport && p.loader.grub.efiInstallAsRemovable && p.loader.grub.device == "nodev"
      && p.loader.efi.efiSysMountPoint == "/boot/efi"
      && p.fileSystems."/boot/efi".device == "/dev/disk/by-uuid/B1C2-D3E4" && p.fileSystems."/boot/efi".fsType == "vfat"
      && p.fileSystems."/".device == "/dev/disk/by-uuid/4b2e8d10-97a3-4c55-b1f0-6a3d2c8e9f71"
      && n.networkConfig.IPv6AcceptRA && n.address == [ "192.0.2.30/23" ] && n.routes == [{ Gateway = "192.0.2.1"; }]
      && vultr.r.failed == [ ];
    "adopted after nixos-infect: stateVersion from the machine" = (nets infected.r).stateVersion == "26.05";
    "adopted facts, inventory ipv4 not on the machine: evaluation fails" =
      let
        inv = hetzner.inventory // { node = map (n: if n.name == "saorsa-6" then n // { ipv4 = "198.51.100.99"; } else n) hetzner.inventory.node; };
      in
      failsWith "not the machine" (host { inventory = inv; factsFor = _: hetzner.facts; name = "saorsa-6"; extra = [ withKey ]; })
      || failsWith "put only" (host { inventory = inv; factsFor = _: hetzner.facts; name = "saorsa-6"; extra = [ withKey ]; });
    "adopted facts: an inventory ipv6 the machine lacks fails evaluation" =
      let
        inv = hetzner.inventory // { node = map (n: if n.name == "saorsa-6" then n // { ipv6 = "2001:db8:ffff::1"; } else n) hetzner.inventory.node; };
      in
      failsWith "not among the adopted addresses" (host { inventory = inv; factsFor = _: hetzner.facts; name = "saorsa-6"; extra = [ withKey ]; });
  };

  failed = builtins.attrNames (lib.filterAttrs (_: ok: !ok) tests);
in
{
  total = builtins.length (builtins.attrNames tests);
  inherit failed tests;
  passed = builtins.filter (n: !builtins.elem n failed) (builtins.attrNames tests);
}

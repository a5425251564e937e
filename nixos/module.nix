# services.x0x-bootstrap: one x0x bootstrap node (QUIC over UDP, health on loopback).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.x0x-bootstrap;

  settingsFormat = pkgs.formats.toml { };

  # The binary's default for transport.udp_buffer_bytes (7 MiB). Only the keys the
  # issue names are typed below; transport.*, limits.*, key_file, ... pass through the
  # free-form type, so this default is repeated here for the sysctls.
  defaultUdpBufferBytes = 7340032;

  # "[::]:12000", "0.0.0.0:12000", "host:12000" -> 12000
  portOf = address: lib.toInt (lib.last (lib.splitString ":" address));

  isLoopback = address:
    builtins.match "(127\\.[0-9]+\\.[0-9]+\\.[0-9]+|\\[::1]|localhost):[0-9]+" address != null;

  # Key material must never reach the Nix store: no PEM blocks, no key-looking keys.
  # Returns the dotted paths where `value` holds any.
  keyMaterialNames = [ "key" "private_key" "node_key" "secret_key" "key_pem" ];
  findKeyMaterial = path: value:
    let
      inAttr = name: v:
        lib.optional (builtins.elem name keyMaterialNames) (path ++ [ name ])
        ++ findKeyMaterial (path ++ [ name ]) v;
    in
    if builtins.isAttrs value then lib.concatLists (lib.mapAttrsToList inAttr value)
    else if builtins.isList value then lib.concatMap (findKeyMaterial path) value
    else lib.optional (builtins.isString value && lib.hasInfix "-----BEGIN" value) path;
  keyMaterialInSettings = map (lib.concatStringsSep ".") (findKeyMaterial [ ] cfg.settings);

  keyFileSetting = cfg.settings.key_file or null;

  # The generated file, validated by the package's own parser at build time, so a bad
  # setting fails `nixos-rebuild build`, not the boot.
  configFile =
    let
      unchecked = settingsFormat.generate "x0x-bootstrap.toml" cfg.settings;
    in
    pkgs.runCommand "x0x-bootstrap-checked.toml"
      {
        nativeBuildInputs = [ cfg.package ];
        preferLocalBuild = true;
      } ''
      x0x-bootstrap --check --config ${unchecked}
      ln -s ${unchecked} "$out"
    '';

  udpBufferBytes = cfg.settings.transport.udp_buffer_bytes or defaultUdpBufferBytes;
in
{
  options.services.x0x-bootstrap = {
    enable = lib.mkEnableOption "the x0x bootstrap node";

    package = lib.mkPackageOption pkgs "x0x-bootstrap" { };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether to open the QUIC (UDP) port of `settings.listen` in the firewall.
        The health port is loopback-only and is never opened.
      '';
    };

    identityFile = lib.mkOption {
      type = lib.types.nullOr lib.types.externalPath;
      default = null;
      example = "/run/keys/x0x-node.pem";
      description = ''
        A pre-provisioned node key, outside the Nix store. systemd hands it to the
        service with `LoadCredential` (readable by the service only, never copied into
        the store). When null, the node generates its key under `settings.state_dir`
        on first start.
      '';
    };

    settings = lib.mkOption {
      default = { };
      description = ''
        Configuration written to the node's TOML file; see `x0x-bootstrap --help`.
        Keys not declared here (`transport.*`, `limits.*`, ...) are passed through as
        they are. The file is checked with `x0x-bootstrap --check` when it is built.
      '';
      type = lib.types.submodule {
        freeformType = settingsFormat.type;

        options = {
          listen = lib.mkOption {
            type = lib.types.str;
            default = "[::]:12000";
            description = "QUIC (UDP) address to listen on.";
          };

          peers = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            default = [ ];
            example = [ "198.51.100.7:12000" ];
            description = ''The other bootstrap nodes: "ip:port", "[ipv6]:port" or "host:port".'';
          };

          state_dir = lib.mkOption {
            type = lib.types.strMatching "/var/lib/[^/].*";
            default = "/var/lib/x0x-bootstrap";
            description = ''
              Where the node keeps its key and state. Must lie under /var/lib, where
              systemd's StateDirectory creates it owned by the service user.
            '';
          };

          roles = {
            coordinator = lib.mkOption {
              type = lib.types.bool;
              default = true;
              description = "Whether the node coordinates hole punching between peers.";
            };
            reflector = lib.mkOption {
              type = lib.types.bool;
              default = true;
              description = "Whether the node tells peers their observed address.";
            };
            relay = lib.mkOption {
              type = lib.types.bool;
              default = true;
              description = "Whether the node relays traffic for peers that cannot connect directly.";
            };
          };

          health.listen = lib.mkOption {
            type = lib.types.str;
            default = "127.0.0.1:12600";
            description = ''
              HTTP address of the `/health` endpoint. Must be a loopback address; read
              it over SSH (`curl http://127.0.0.1:12600/health`).
            '';
          };

          log = {
            level = lib.mkOption {
              type = lib.types.str;
              default = "info";
              example = "info,x0x=debug";
              description = "Log level or tracing filter directive.";
            };
            format = lib.mkOption {
              type = lib.types.enum [ "text" "json" ];
              default = "text";
              description = "Log line format on the journal.";
            };
          };
        };
      };
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = isLoopback cfg.settings.health.listen;
        message = ''
          services.x0x-bootstrap.settings.health.listen = "${cfg.settings.health.listen}" is
          not a loopback address (127.0.0.0/8, [::1] or localhost). The health endpoint
          is not meant to be reachable from the network.
        '';
      }
      {
        assertion = keyMaterialInSettings == [ ];
        message = ''
          services.x0x-bootstrap.settings holds key material at
          ${lib.concatStringsSep ", " keyMaterialInSettings}. Everything in settings is
          copied into the world-readable Nix store: use identityFile instead.
        '';
      }
      {
        assertion =
          keyFileSetting
          == null
          || (builtins.isString keyFileSetting && !lib.hasPrefix builtins.storeDir keyFileSetting);
        message = ''
          services.x0x-bootstrap.settings.key_file must be a path string outside the Nix
          store (a Nix path value would copy the key into the store): use identityFile.
        '';
      }
      {
        assertion = cfg.identityFile == null || keyFileSetting == null;
        message = "Set either services.x0x-bootstrap.identityFile or settings.key_file, not both.";
      }
    ];

    users.users.x0x = {
      isSystemUser = true;
      group = "x0x";
      description = "x0x bootstrap node";
    };
    users.groups.x0x = { };

    # The node asks for 7 MiB socket buffers (transport.udp_buffer_bytes); without
    # these the kernel silently caps them at the defaults.
    boot.kernel.sysctl = {
      "net.core.rmem_max" = lib.mkDefault udpBufferBytes;
      "net.core.wmem_max" = lib.mkDefault udpBufferBytes;
    };

    networking.firewall.allowedUDPPorts = lib.mkIf cfg.openFirewall [
      (portOf cfg.settings.listen)
    ];

    systemd.services.x0x-bootstrap = {
      description = "x0x bootstrap node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart =
          "${lib.getExe' cfg.package "x0x-bootstrap"} --config ${configFile}"
          + lib.optionalString (cfg.identityFile != null) " --key-file %d/node-key";
        LoadCredential = lib.optional (cfg.identityFile != null) "node-key:${cfg.identityFile}";
        Restart = "always";
        RestartSec = "5s";
        TimeoutStopSec = "15s";

        User = "x0x";
        Group = "x0x";
        StateDirectory = lib.removePrefix "/var/lib/" cfg.settings.state_dir;
        StateDirectoryMode = "0700";
        UMask = "0077";

        # Hardening: at least what the tailscale-derper module sets, and more.
        CapabilityBoundingSet = [ "" ];
        AmbientCapabilities = [ "" ];
        DevicePolicy = "closed";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        NoNewPrivileges = true;
        PrivateDevices = true;
        PrivateMounts = true;
        PrivateTmp = true;
        PrivateUsers = true;
        ProcSubset = "pid";
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHome = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProtectSystem = "strict";
        RemoveIPC = true;
        # UDP and TCP (QUIC, health), AF_UNIX for sd_notify and the resolver.
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
        SystemCallErrorNumber = "EPERM";
      };
    };
  };
}

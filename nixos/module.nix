# services.x0x-bootstrap: one x0x bootstrap node (QUIC over UDP, health on loopback,
# optionally the TCP relay on a socket systemd opens for it).
#
# This file is a function of the flake's packages, so that the package option's default
# exists: flake.nix imports it as
#   import ./nixos/module.nix { x0xPackages = self.packages; }
# and the default of `package` is x0x.packages.<system>.x0x-bootstrap.
{ x0xPackages }:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.x0x-bootstrap;

  settingsFormat = pkgs.formats.toml { };

  # The binary's default for transport.udp_buffer_bytes (7 MiB). transport.*, limits.*,
  # mesh.*, ... pass through the free-form settings; this default is repeated here for
  # the sysctls.
  defaultUdpBufferBytes = 7340032;

  # An IP literal, as the binary's socket addresses take (no host names).
  ipAddress = lib.types.strMatching "([0-9]{1,3}\\.){3}[0-9]{1,3}|[0-9a-fA-F]*:[0-9a-fA-F:.]*" // {
    description = "IPv4 or IPv6 address literal";
  };

  # "::" 12000 -> "[::]:12000"; "0.0.0.0" 12000 -> "0.0.0.0:12000"
  socketAddress = address: port:
    if lib.hasInfix ":" address then "[${address}]:${toString port}" else "${address}:${toString port}";

  isLoopback = address: builtins.match "127\\.[0-9]+\\.[0-9]+\\.[0-9]+|::1" address != null;

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

  uncheckedConfigFile = settingsFormat.generate "x0x-bootstrap.toml" cfg.settings;

  # Validated by the package's own parser at build time, so a bad setting fails
  # `nixos-rebuild build`, not the boot. checkConfig = false skips it (cross builds,
  # where the build machine cannot run the host's binary).
  configFile =
    if cfg.checkConfig then
      pkgs.runCommand "x0x-bootstrap-checked.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        } ''
        x0x-bootstrap --check --config ${uncheckedConfigFile}
        ln -s ${uncheckedConfigFile} "$out"
      ''
    else uncheckedConfigFile;

  udpBufferBytes = cfg.settings.transport.udp_buffer_bytes or defaultUdpBufferBytes;

  defaultUser = "x0x";
in
{
  options.services.x0x-bootstrap = {
    enable = lib.mkEnableOption "the x0x bootstrap node";

    package = lib.mkPackageOption (x0xPackages.${pkgs.stdenv.hostPlatform.system} or { }) "x0x-bootstrap" {
      pkgsText = "x0x.packages.\${pkgs.stdenv.hostPlatform.system}";
    };

    checkConfig = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether to run the generated configuration through `x0x-bootstrap --check` when
        the system is built. Turn it off for cross builds, where the build machine cannot
        run the package's binary.
      '';
    };

    address = lib.mkOption {
      type = ipAddress;
      default = "::";
      example = "0.0.0.0";
      description = ''
        Address the QUIC (UDP) socket binds. `::` takes IPv4 and IPv6 (the binary falls
        back to IPv4 where IPv6 is disabled).
      '';
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 12000;
      description = "QUIC (UDP) port: the port agents and the other bootstrap nodes dial.";
    };

    health = {
      address = lib.mkOption {
        type = ipAddress;
        default = "127.0.0.1";
        description = ''
          Address of the `/health` and `/metrics` HTTP endpoint. Must be a loopback
          address unless `settings.health.allow_remote` is set: the endpoints are
          unauthenticated. Read it over SSH (`curl http://127.0.0.1:12600/health`).
        '';
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = 12600;
        description = "Port of the `/health` and `/metrics` HTTP endpoint. Never opened in the firewall.";
      };
    };

    tcp = {
      enable = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = ''
          Whether to serve the TCP (TLS) relay for agents whose networks block UDP.
          systemd opens the listening socket (`x0x-bootstrap.socket`, file descriptor
          name `tcp`) and hands it to the service, so port 443 needs no capability.
          When false, `[tcp] listen` is set to `""` (off).
        '';
      };
      address = lib.mkOption {
        type = ipAddress;
        default = "::";
        description = "Address of the TCP relay socket (`::` takes IPv4 and IPv6).";
      };
      port = lib.mkOption {
        type = lib.types.port;
        default = 443;
        description = "TCP port of the relay.";
      };
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether to open the QUIC (UDP) port, and the TCP relay port when `tcp.enable` is
        set. The health port is never opened.
      '';
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = defaultUser;
      description = ''
        User the node runs as. When left at `${defaultUser}`, the module creates it;
        any other user must exist.
      '';
    };

    group = lib.mkOption {
      type = lib.types.str;
      default = defaultUser;
      description = "Group the node runs as; created by the module when left at `${defaultUser}`.";
    };

    identityFile = lib.mkOption {
      type = lib.types.nullOr lib.types.externalPath;
      default = null;
      example = "/run/keys/x0x-node.pem";
      description = ''
        A pre-provisioned node key, outside the Nix store. systemd hands it to the
        service with `LoadCredential` (readable by the service only, never copied into
        the store). When null, the node generates its key under `settings.state_dir`
        on first start and keeps it there.
      '';
    };

    settings = lib.mkOption {
      default = { };
      description = ''
        Configuration written to the node's TOML file; see `x0x-bootstrap --help` and
        the README. `listen`, `health.listen` and `tcp.listen` are set from the typed
        options above (`tcp.listen` is `""` unless `tcp.enable`). Keys not declared here (`transport.*`, `limits.*`, `mesh.*`, ...)
        are passed through as they are; the file is checked with
        `x0x-bootstrap --check` when it is built (see `checkConfig`).
      '';
      type = lib.types.submodule {
        freeformType = settingsFormat.type;

        options = {
          peers = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            default = [ ];
            example = [ "198.51.100.7:12000" "a250e8…(64 hex)@203.0.113.9:12000" ];
            description = ''
              The other bootstrap nodes: "ip:port", "[ipv6]:port" or "host:port",
              optionally pinned to a key as "PEERID@addr".
            '';
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
        assertion = isLoopback cfg.health.address || (cfg.settings.health.allow_remote or false);
        message = ''
          services.x0x-bootstrap.health.address = "${cfg.health.address}" is not a loopback
          address (127.0.0.0/8 or ::1). The health and metrics endpoints are
          unauthenticated; set settings.health.allow_remote = true to permit this.
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
      {
        assertion = !(cfg.tcp.enable && cfg.tcp.port == cfg.health.port && cfg.tcp.address == cfg.health.address);
        message = "services.x0x-bootstrap.tcp and health use the same address and port.";
      }
    ];

    services.x0x-bootstrap.settings = {
      listen = socketAddress cfg.address cfg.port;
      health.listen = socketAddress cfg.health.address cfg.health.port;
      # The binary's default is "[::]:443": without the socket it would try to bind that
      # itself and, unprivileged, fail to start. Off is the empty string.
      tcp.listen = if cfg.tcp.enable then socketAddress cfg.tcp.address cfg.tcp.port else "";
    };

    users.users = lib.mkIf (cfg.user == defaultUser) {
      ${defaultUser} = {
        isSystemUser = true;
        inherit (cfg) group;
        description = "x0x bootstrap node";
      };
    };
    users.groups = lib.mkIf (cfg.group == defaultUser) { ${defaultUser} = { }; };

    # The node asks for 7 MiB socket buffers (transport.udp_buffer_bytes); without these
    # the kernel silently caps them. NixOS merges these two sysctls by taking the highest
    # definition, so another module asking for more keeps its value and one asking for
    # less does not shrink ours.
    boot.kernel.sysctl = {
      "net.core.rmem_max" = udpBufferBytes;
      "net.core.wmem_max" = udpBufferBytes;
    };

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedUDPPorts = [ cfg.port ];
      allowedTCPPorts = lib.optional cfg.tcp.enable cfg.tcp.port;
    };

    # The TCP relay's listening socket: systemd binds the privileged port and passes it
    # to the service as the file descriptor named `tcp` (sd_listen_fds), so the service
    # runs without CAP_NET_BIND_SERVICE. Restarting the service keeps the socket open.
    systemd.sockets.x0x-bootstrap = lib.mkIf cfg.tcp.enable {
      description = "x0x bootstrap node, TCP relay socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ (socketAddress cfg.tcp.address cfg.tcp.port) ];
      socketConfig = {
        FileDescriptorName = "tcp";
        Service = "x0x-bootstrap.service";
        BindIPv6Only = "both";
        NoDelay = true;
      };
    };

    systemd.services.x0x-bootstrap = {
      description = "x0x bootstrap node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ] ++ lib.optional cfg.tcp.enable "x0x-bootstrap.socket";
      after = [ "network-online.target" ] ++ lib.optional cfg.tcp.enable "x0x-bootstrap.socket";

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        ExecStart =
          "${lib.getExe cfg.package} --config ${configFile}"
          + lib.optionalString (cfg.identityFile != null) " --key-file %d/node-key";
        LoadCredential = lib.optional (cfg.identityFile != null) "node-key:${cfg.identityFile}";
        Restart = "always";
        RestartSec = "5s";
        TimeoutStopSec = "15s";

        User = cfg.user;
        Group = cfg.group;
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
        # UDP and TCP (QUIC, health, the relay), AF_UNIX for sd_notify and the resolver.
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

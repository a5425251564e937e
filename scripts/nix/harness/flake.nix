# A stand-in for the nixpkgs flake, for offline evaluation with a modern Nix
# (scripts/check-nix-modern.sh passes it with --override-input nixpkgs). It has nixpkgs'
# real lib, lib.nixosSystem = the nixos-eval harness, and a legacyPackages whose
# testers.runNixOSTest evaluates each VM test node through that harness instead of
# building VMs. The script copies lib/ and nixos-eval/ next to this file.
#
# What it shows: that flake.nix's own wiring, the module, the hosts and the VM tests'
# node configurations evaluate, with which assertions, settings and units. What it
# cannot: anything nixpkgs itself provides (packages, real option declarations, the test
# driver).
{
  outputs = _:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];

      stub = name: attrs: {
        type = "derivation";
        inherit name;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        drvPath = "/nix/store/00000000000000000000000000000000-${name}.drv";
      } // attrs;

      x0xPackages = {
        x0x-bootstrap = stub "x0x-bootstrap-0.1.0" { meta.mainProgram = "x0x-bootstrap"; };
        x0x-cli = stub "x0x-cli-0.1.0" { meta.mainProgram = "x0x"; };
      };

      lib = (import ./lib).extend (_final: _prev: {
        nixosSystem = { modules, ... }: evalNixos modules { };
      });

      evalNixos = modules: extraArgs:
        import ./nixos-eval/eval.nix {
          inherit lib;
          modules = modules ++ [
            { services.x0x-bootstrap.package = lib.mkForce x0xPackages.x0x-bootstrap; }
            # As NixOS's openssh module declares them: lists, so definitions from several
            # modules (the host's keys and a test's) concatenate.
            {
              options.users.users = lib.mkOption {
                type = lib.types.attrsOf (lib.types.submodule {
                  options.openssh.authorizedKeys = {
                    keys = lib.mkOption { type = lib.types.listOf lib.types.singleLineStr; default = [ ]; };
                    keyFiles = lib.mkOption { type = lib.types.listOf lib.types.path; default = [ ]; };
                  };
                });
              };
            }
            { _module.args = extraArgs; }
          ];
          extraPkgs = x0xPackages // {
            python3 = stub "python3" { };
          };
        };

      fakePkgs = system: {
        inherit lib;
        stdenv.hostPlatform.system = system;
        path = ./path;
        jq = stub "jq" { };
        curl = stub "curl" { };
        python3 = stub "python3" { };
        writers.writePython3Bin = name: _: text: stub name { inherit text; };
        testers.runNixOSTest = runTest system;
      };

      # The VM test, evaluated instead of run: each node's configuration through the
      # harness, and the test script as text.
      runTest = system: test:
        let
          nodeNames = builtins.attrNames t.nodes;
          fakeNodes = lib.genAttrs nodeNames (name: {
            system.build.toplevel = "/nix/store/00000000000000000000000000000000-nixos-system-${name}";
            networking.hostName = name;
          });
          args = { inherit lib; pkgs = fakePkgs system; config = { }; nodes = fakeNodes; };
          t = if builtins.isFunction test then test args else test;
          evalNode = name: m:
            let r = evalNixos [ m { networking.hostName = lib.mkDefault name; } ] { nodes = fakeNodes; };
            in {
              inherit (r) failed warnings hostName;
              x0x = r.services.x0x-bootstrap or null;
              unit = r.systemd.services.x0x-bootstrap or null;
              firewall = r.firewall;
              rootKeys = r.users.users.root.openssh.authorizedKeys.keys or [ ];
            };
        in
        {
          inherit (t) name;
          nodes = builtins.mapAttrs evalNode t.nodes;
          testScript = if builtins.isFunction t.testScript then t.testScript { nodes = fakeNodes; } else t.testScript;
        };
    in
    {
      inherit lib;
      legacyPackages = lib.genAttrs systems fakePkgs;
    };
}

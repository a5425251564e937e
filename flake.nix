{
  description = "x0x: the bootstrap node, the agent CLI, their NixOS module and the saorsa fleet";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    crane.url = "github:ipetkov/crane";
  };

  outputs = { self, nixpkgs, crane }:
    let
      inherit (nixpkgs) lib;

      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      crateFor = pkgs:
        import ./nix/crate.nix {
          inherit pkgs;
          craneLib = crane.mkLib pkgs;
        };

      # One entry per node of hosts/inventory.toml: { node, machine }.
      hosts = import ./hosts { };
    in
    {
      packages = forAllSystems (pkgs:
        let
          inherit (crateFor pkgs) x0x-bootstrap x0x-cli;
        in
        {
          inherit x0x-bootstrap x0x-cli;
          default = x0x-bootstrap;
        });

      checks = forAllSystems (pkgs:
        (crateFor pkgs).checks
        # The VM tests need KVM on an x86_64-linux builder; on other hosts
        # `nix flake check --all-systems` still evaluates them.
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") {
          vm-mesh = pkgs.testers.runNixOSTest (import ./nixos/tests/mesh.nix { inherit self; });
          vm-deploy = pkgs.testers.runNixOSTest (import ./nixos/tests/deploy.nix { inherit self; });
        });

      overlays.default = final: _prev: {
        inherit (crateFor final) x0x-bootstrap x0x-cli;
      };

      nixosModules = {
        # The module, with its package option defaulting to this flake's build.
        x0x-bootstrap = {
          _file = ./nixos/module.nix;
          key = "x0x#nixosModules.x0x-bootstrap";
          imports = [ (import ./nixos/module.nix { x0xPackages = self.packages; }) ];
        };
        default = self.nixosModules.x0x-bootstrap;
      };

      nixosConfigurations =
        builtins.mapAttrs
          (_name: host:
            lib.nixosSystem {
              modules = [ self.nixosModules.default host.node host.machine ];
            })
          hosts;

      devShells = forAllSystems (pkgs: {
        default = (crane.mkLib pkgs).devShell {
          inherit (crateFor pkgs) checks;
          packages = [ pkgs.nixpkgs-fmt pkgs.deadnix pkgs.statix pkgs.cargo-nextest pkgs.shellcheck ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixpkgs-fmt);
    };
}

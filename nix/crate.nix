# The x0x workspace built with crane: one filtered source, one buildDepsOnly of the whole
# workspace whose artifacts both packages and every check reuse.
#
# Packages (attribute = pname, and meta.mainProgram is the binary they install):
#   x0x-bootstrap   crates/x0x-bootstrap, the node  (bin/x0x-bootstrap)
#   x0x-cli         crates/x0x-cli, the agent CLI  (bin/x0x)
{ pkgs, craneLib }:
let
  inherit (pkgs) lib;

  root = ../.;

  # Rust sources, Cargo.toml/Cargo.lock and every .toml (hosts/inventory.toml is read
  # by a test); nothing else, so editing Nix files or docs does not rebuild the crates.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      (lib.fileset.maybeMissing ../tests)
    ];
  };

  # The root Cargo.toml is the SDK package `x0x`; every crate takes its version from
  # [workspace.package].
  inherit (craneLib.crateNameFromCargoToml { inherit src; }) version;

  # No extra inputs: TLS is rustls with aws-lc-rs, whose aws-lc-sys builds its C code
  # with stdenv's compiler through the `cc` crate on Linux x86_64/aarch64 (no CMake, Go
  # or Perl there since aws-lc-sys 0.36), and nothing links OpenSSL.
  commonArgs = {
    inherit src version;
    pname = "x0x-workspace";
    strictDeps = true;
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  # One workspace member, built and installed alone (`cargo build -p CRATE`).
  member = { crate, mainProgram, description }:
    craneLib.buildPackage (commonArgs // {
      inherit cargoArtifacts;
      pname = crate;
      cargoExtraArgs = "--locked -p ${crate}";
      # The tests run once, for the whole workspace, in the nextest check below.
      doCheck = false;
      meta = {
        inherit description mainProgram;
        homepage = "https://github.com/saorsa-labs/x0x";
        license = with lib.licenses; [ mit asl20 ];
        platforms = lib.platforms.linux;
      };
    });

  x0x-bootstrap = member {
    crate = "x0x-bootstrap";
    mainProgram = "x0x-bootstrap";
    description = "x0x bootstrap node: reflector, coordinator and relay for x0x agents";
  };

  x0x-cli = member {
    crate = "x0x-cli";
    mainProgram = "x0x";
    description = "x0x agent command line: netcheck, listen, connect, status";
  };
in
{
  inherit x0x-bootstrap x0x-cli;

  checks = {
    inherit x0x-bootstrap x0x-cli;

    x0x-clippy = craneLib.cargoClippy (commonArgs // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--workspace --all-targets -- --deny warnings";
    });

    x0x-fmt = craneLib.cargoFmt { inherit src version; pname = "x0x-workspace"; };

    x0x-doc = craneLib.cargoDoc (commonArgs // {
      inherit cargoArtifacts;
      cargoDocExtraArgs = "--workspace --no-deps";
      env.RUSTDOCFLAGS = "--deny warnings";
    });

    # The integration tests spawn the binaries on 127.0.0.0/8 only, which the build
    # sandbox provides; tests that need root skip themselves.
    x0x-nextest = craneLib.cargoNextest (commonArgs // {
      inherit cargoArtifacts;
      cargoNextestExtraArgs = "--workspace";
      partitions = 1;
      partitionType = "count";
      cargoNextestPartitionsExtraArgs = "--no-tests=fail";
    });
  };
}

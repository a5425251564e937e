# The x0x crate built with crane, the quick-start way: one filtered source, one
# buildDepsOnly whose artifacts the package and every check reuse.
{ pkgs, craneLib }:
let
  inherit (pkgs) lib;

  root = ../.;

  # Rust sources, Cargo.toml/Cargo.lock and every .toml (hosts/inventory.toml is read
  # by a test); nothing else, so editing Nix files or docs does not rebuild the crate.
  src = lib.fileset.toSource {
    inherit root;
    fileset = lib.fileset.unions [
      (craneLib.fileset.commonCargoSources root)
      (lib.fileset.maybeMissing ../tests)
    ];
  };

  # No extra inputs: TLS is rustls with aws-lc-rs, whose aws-lc-sys (0.47) builds its
  # C code with stdenv's compiler through the `cc` crate on Linux x86_64/aarch64 (no
  # CMake, Go or Perl there since aws-lc-sys 0.36), and nothing links OpenSSL.
  commonArgs = {
    inherit src;
    strictDeps = true;
  };

  cargoArtifacts = craneLib.buildDepsOnly commonArgs;

  x0x-bootstrap = craneLib.buildPackage (commonArgs // {
    inherit cargoArtifacts;
    # The tests run once, in the nextest check below.
    doCheck = false;
    meta = {
      description = "x0x bootstrap node";
      mainProgram = "x0x-bootstrap";
      platforms = lib.platforms.linux;
    };
  });
in
{
  inherit x0x-bootstrap;

  checks = {
    inherit x0x-bootstrap;

    x0x-clippy = craneLib.cargoClippy (commonArgs // {
      inherit cargoArtifacts;
      cargoClippyExtraArgs = "--all-targets -- --deny warnings";
    });

    x0x-fmt = craneLib.cargoFmt { inherit src; };

    x0x-doc = craneLib.cargoDoc (commonArgs // {
      inherit cargoArtifacts;
      env.RUSTDOCFLAGS = "--deny warnings";
    });

    # The integration tests spawn the binary on 127.0.0.0/8 only, which the build
    # sandbox provides; tests that need root skip themselves.
    x0x-nextest = craneLib.cargoNextest (commonArgs // {
      inherit cargoArtifacts;
      partitions = 1;
      partitionType = "count";
      cargoNextestPartitionsExtraArgs = "--no-tests=fail";
    });
  };
}

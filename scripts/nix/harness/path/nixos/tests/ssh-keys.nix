# Stand-in for nixpkgs' nixos/tests/ssh-keys.nix (its snakeoil key pair), for evaluation.
_pkgs: {
  snakeOilPublicKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHarnessSnakeOilStandInForEvaluationOnly000 snakeoil";
  snakeOilPrivateKey = "/nix/store/00000000000000000000000000000000-snakeoil-private-key";
}

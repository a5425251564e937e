# Evaluated by scripts/check-nix.sh with plain builtins (no nixpkgs):
#   nix-instantiate --eval --strict --json scripts/check-inventory.nix
# Computes the fleet exactly as the hosts do (hosts/fleet.nix via hosts/default.nix)
# and fails evaluation, naming the problem, unless every node has the other nodes, and
# only them, as its peers (pinned as PEERID@addr where the inventory knows the peer_id),
# the optional fields are well formed, and every node has a facts file. Also checks that
# flake.nix and flake.lock name only the inputs nixpkgs and crane, each locked to a
# revision and a narHash.
let
  root = ../.;
  inventory = builtins.fromTOML (builtins.readFile (root + "/hosts/inventory.toml"));
  fleet = import (root + "/hosts/fleet.nix") inventory;
  hosts = import (root + "/hosts") { };

  names = map (node: node.name) inventory.node;
  facts = name: builtins.fromJSON (builtins.readFile (root + "/hosts/facts/${name}.json"));
  count = builtins.length;
  unique = list: builtins.foldl' (acc: x: if builtins.elem x acc then acc else acc ++ [ x ]) [ ] list;

  check = ok: message: if ok then true else throw "check-inventory: ${message}";

  nodeChecks = name:
    let
      node = fleet.${name};
      others = builtins.filter (n: n != name) names;
    in
    [
      (check (count node.peers == count names - 1)
        "${name} has ${toString (count node.peers)} peers, expected ${toString (count names - 1)}")
      (check (!builtins.elem node.address node.peers) "${name} lists itself as a peer")
      (check (unique node.peers == node.peers) "${name} lists a peer twice")
      (check (node.peers == map (n: fleet.${n}.peer) others)
        "${name}'s peers are not exactly the other nodes' (pinned) addresses")
      (check (builtins.all (key: node ? ${key}) [ "ipv4" "quic_port" "health_port" "tcp_port" "provider" "ipv4_prefix_length" "ipv4_gateway" ])
        "${name} lacks a field that hosts/common.nix or hosts/network.nix reads")
      (check (!(node ? peer_id) || builtins.match "[0-9a-f]{64}" node.peer_id != null)
        "${name}: peer_id must be 64 lowercase hex digits")
      (check (!(node ? ipv6) || builtins.match "[0-9a-fA-F:]+" node.ipv6 != null)
        "${name}: ipv6 must be an IPv6 address")
      (check (!(node ? ipv6_gateway) || node ? ipv6) "${name}: ipv6_gateway without ipv6")
      (check (builtins.pathExists (root + "/hosts/${name}.nix")) "hosts/${name}.nix is missing")
      (check (builtins.pathExists (root + "/hosts/facts/${name}.json")) "hosts/facts/${name}.json is missing")
      (check ((facts name).name == name && (facts name).schema == 1) "hosts/facts/${name}.json is not ${name}'s (schema 1)")
      (check (builtins.attrNames hosts.${name} == [ "machine" "node" ])
        "hosts/default.nix gives ${name} other parts than machine, node")
    ];

  flakeInputs = builtins.attrNames (import (root + "/flake.nix")).inputs;
  lock = builtins.fromJSON (builtins.readFile (root + "/flake.lock"));
  lockedInputs = builtins.attrNames lock.nodes.${lock.root}.inputs;
  isLocked = name:
    let locked = lock.nodes.${name}.locked; in
    locked ? rev && locked ? narHash && locked ? lastModified;

  checks =
    [
      (check (count names == 6) "expected 6 nodes, found ${toString (count names)}")
      (check (unique names == names) "a node name appears twice")
      (check (unique (map (n: fleet.${n}.address) names) == map (n: fleet.${n}.address) names)
        "two nodes share an address")
      (check (builtins.attrNames fleet == builtins.attrNames hosts) "hosts/default.nix and hosts/fleet.nix disagree on the nodes")
      (check (flakeInputs == [ "crane" "nixpkgs" ]) "flake.nix inputs are ${toString flakeInputs}, expected crane and nixpkgs only")
      (check (lockedInputs == [ "crane" "nixpkgs" ]) "flake.lock locks ${toString lockedInputs}, expected crane and nixpkgs only")
      (check (builtins.all isLocked lockedInputs) "an input in flake.lock lacks rev, narHash or lastModified")
    ]
    ++ builtins.concatMap nodeChecks names;
in
assert builtins.all (x: x) checks;
{
  nodes = count names;
  peers = builtins.listToAttrs (map (name: { inherit name; value = count fleet.${name}.peers; }) names);
  adopted = builtins.filter (name: (facts name).adopted != null) names;
  inputs = lockedInputs;
}

# The fleet as data, with plain builtins only (no nixpkgs), so that hosts/default.nix
# and scripts/check-nix.sh compute it the same way.
#
# Argument: the parsed hosts/inventory.toml. Result: one attribute per node, holding
# its inventory entry with the [defaults] filled in, plus
#   address = "ipv4:quic_port";
#   peers   = the other nodes' addresses, in inventory order.
inventory:
let
  withDefaults = entry:
    let
      node = inventory.defaults // entry;
    in
    node // { address = "${node.ipv4}:${toString node.quic_port}"; };

  nodes = map withDefaults inventory.node;

  peersOf = node: map (other: other.address) (builtins.filter (other: other.name != node.name) nodes);
in
builtins.listToAttrs (map
  (node: {
    inherit (node) name;
    value = node // { peers = peersOf node; };
  })
  nodes)

# The fleet as data, with plain builtins only (no nixpkgs), so that hosts/default.nix,
# scripts/check-inventory.nix and the scripts (through nix-instantiate) compute it the
# same way.
#
# Argument: the parsed hosts/inventory.toml. Result: one attribute per node, holding
# its inventory entry with the [defaults] filled in, plus
#   address = "ipv4:quic_port";
#   peer    = "peer_id@address" when the node's peer_id is known, else address;
#   peers   = the other nodes' `peer`, in inventory order.
inventory:
let
  withDefaults = entry:
    let
      node = inventory.defaults // entry;
      address = "${node.ipv4}:${toString node.quic_port}";
    in
    node // {
      inherit address;
      peer = if node ? peer_id then "${node.peer_id}@${address}" else address;
    };

  nodes = map withDefaults inventory.node;

  peersOf = node: map (other: other.peer) (builtins.filter (other: other.name != node.name) nodes);
in
builtins.listToAttrs (map
  (node: {
    inherit (node) name;
    value = node // { peers = peersOf node; };
  })
  nodes)

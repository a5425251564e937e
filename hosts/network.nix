# The node's network, with systemd-networkd, as the machine had it when it was adopted:
# every interface matched by its MAC address (so no interface name can change under us),
# its static addresses, its default routes (Hetzner's 172.31.1.1 on-link beside a /32),
# router advertisements where the provider uses them for IPv6 (Vultr), the resolvers.
#
# Before adoption (hosts/facts/<name>.json with "adopted": null) the inventory's values
# are used instead, on eth0 as nixos-infect names it: they are the providers' usual
# layout, not read off the machine. After adoption, evaluation fails if the inventory's
# addresses are not on the machine.
{ facts, x0xNode }:
{ lib, ... }:
let
  adopted = facts.adopted != null;

  fromInventory = {
    interfaces = [
      {
        name = "eth0";
        mac = null;
        addresses = [ "${x0xNode.ipv4}/${toString x0xNode.ipv4_prefix_length}" ]
          ++ lib.optional (x0xNode ? ipv6) "${x0xNode.ipv6}/${toString (x0xNode.ipv6_prefix_length or 64)}";
        ipv6_accept_ra = x0xNode ? ipv6 && !(x0xNode ? ipv6_gateway);
      }
    ];
    routes = [
      {
        interface = "eth0";
        gateway = x0xNode.ipv4_gateway;
        # A gateway outside a /32 (Hetzner Cloud) is reachable only on-link.
        onlink = x0xNode.ipv4_prefix_length == 32;
      }
    ] ++ lib.optional (x0xNode ? ipv6_gateway) {
      interface = "eth0";
      gateway = x0xNode.ipv6_gateway;
      onlink = false;
    };
  };

  net = if adopted then { inherit (facts) interfaces routes; } else fromInventory;

  # Interfaces that carry a default route must be up for network-online.target.
  routed = map (route: route.interface) net.routes;

  networkFor = iface: {
    name = "10-${iface.name}";
    value = {
      matchConfig = if iface.mac != null then { MACAddress = iface.mac; } else { Name = iface.name; };
      address = iface.addresses;
      routes = map
        (route: { Gateway = route.gateway; } // lib.optionalAttrs route.onlink { GatewayOnLink = true; })
        (builtins.filter (route: route.interface == iface.name) net.routes);
      networkConfig = {
        DHCP = "no";
        IPv6AcceptRA = iface.ipv6_accept_ra;
        LinkLocalAddressing = "ipv6";
      };
      linkConfig.RequiredForOnline = if builtins.elem iface.name routed then "routable" else "no";
    };
  };

  # Static addresses, and those the machine had from router advertisements (SLAAC),
  # which networkd gets back the same way.
  addressesOnMachine = map (a: builtins.head (lib.splitString "/" a)) (lib.concatMap
    (iface: iface.addresses ++ iface.dynamic_addresses or [ ])
    net.interfaces);
in
{
  networking = {
    useDHCP = false;
    useNetworkd = true;
    # Interfaces matched by name (unadopted facts only) keep nixos-infect's eth0 naming.
    usePredictableInterfaceNames = lib.any (iface: iface.mac != null) net.interfaces;
    nameservers = facts.resolvers;
  };
  systemd.network = {
    enable = true;
    networks = builtins.listToAttrs (map networkFor net.interfaces);
  };

  assertions = [
    {
      assertion = builtins.elem x0xNode.ipv4 addressesOnMachine;
      message = ''
        ${x0xNode.name}: hosts/inventory.toml says ipv4 = "${x0xNode.ipv4}", but the
        adopted facts (hosts/facts/${x0xNode.name}.json) put only
        ${toString addressesOnMachine} on the machine.
      '';
    }
    {
      assertion = !(x0xNode ? ipv6) || builtins.elem x0xNode.ipv6 addressesOnMachine || (!adopted);
      message = ''
        ${x0xNode.name}: hosts/inventory.toml says ipv6 = "${x0xNode.ipv6 or ""}", which is
        not among the adopted addresses ${toString addressesOnMachine}.
      '';
    }
  ];
}

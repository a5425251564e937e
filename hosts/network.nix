# Static IPv4 addressing for the node's provider: one public address on the first NIC
# (named eth0, as nixos-infect leaves these machines), with the gateway routed on-link
# because Hetzner Cloud's gateway 172.31.1.1 lies outside the node's /32. The values are
# in hosts/inventory.toml; the resolvers are each provider's own.
{ x0xNode, ... }:
let
  resolvers = {
    DigitalOcean = [ "67.207.67.2" "67.207.67.3" ];
    Hetzner = [ "185.12.64.1" "185.12.64.2" ];
    Vultr = [ "108.61.10.10" ];
  };
in
{
  networking = {
    usePredictableInterfaceNames = false;
    useDHCP = false;
    interfaces.eth0.ipv4 = {
      addresses = [
        {
          address = x0xNode.ipv4;
          prefixLength = x0xNode.ipv4_prefix_length;
        }
      ];
      routes = [
        {
          address = x0xNode.ipv4_gateway;
          prefixLength = 32;
        }
      ];
    };
    defaultGateway = {
      address = x0xNode.ipv4_gateway;
      interface = "eth0";
    };
    nameservers = resolvers.${x0xNode.provider};
  };
}

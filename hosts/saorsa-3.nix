# saorsa-3: DigitalOcean, SFO.
# The machine itself (platform, disks, boot loader, interfaces, addresses, resolvers,
# state version) is described by hosts/facts/saorsa-3.json, which scripts/adopt-host.sh
# writes from the running machine; hosts/hardware.nix and hosts/network.nix read it.
# Settings particular to this one node go here.
{ }

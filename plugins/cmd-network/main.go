// Command guest-agent-cmd-network serves qemu-ga's network queries,
// guest-network-get-interfaces and guest-network-get-route, with the result
// shapes of QEMU's qga/qapi-schema.json.
//
// qemu-ga gathers interfaces with getifaddrs(3) plus SIOCGIFHWADDR and
// /proc/net/dev, and routes from /proc/net/route and /proc/net/ipv6_route.
// This plugin asks the kernel the same questions over rtnetlink
// (github.com/vishvananda/netlink) and rebuilds qemu-ga's answers from the
// replies: same entries, same order, same values (see interfaces.go and
// routes.go for the few values netlink cannot give).
//
// The commands read the network namespace of the calling thread.
package main

import (
	"github.com/guest-agent/guest-agent/shared/sdk"
)

var version = "dev" // set by the build: -X main.version=...

func main() {
	sdk.ServeCommands(newPlugin())
}

func newPlugin() *sdk.CommandPlugin {
	return &sdk.CommandPlugin{
		Name:    "cmd-network",
		Version: version,
		Commands: []sdk.Command{
			{
				Name:        "guest-network-get-interfaces",
				Description: "Get the list of network interfaces with their hardware address, IP addresses and statistics.",
				ArgsSchema:  noArgsSchema,
				Handler:     getInterfaces,
			},
			{
				Name:        "guest-network-get-route",
				Description: "Get the IPv4 (main table) and IPv6 routes, as /proc/net/route and /proc/net/ipv6_route show them.",
				ArgsSchema:  noArgsSchema,
				Handler:     getRoutes,
			},
		},
	}
}

const noArgsSchema = `{"type":"object","properties":{},"additionalProperties":false}`

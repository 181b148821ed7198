// Command guest-agent-exchange-virtio is the exchange plugin for qemu-ga's
// four channel methods: virtio-serial, isa-serial, unix-listen and
// vsock-listen. It never relays bytes: it opens the device or accepts the
// connection and hands the descriptor to the parser over the channel's inbox
// (see shared/session), then only watches for host connect/disconnect.
package main

import "github.com/guest-agent/guest-agent/shared/sdk"

// version is set at link time (-X main.version=...).
var version = "dev"

func main() {
	sdk.ServeExchange(&sdk.ExchangePlugin{
		Name:     "exchange-virtio",
		Version:  version,
		Methods:  []string{methodVirtio, methodISASerial, methodUnix, methodVsock},
		Exchange: &Exchange{},
	})
}

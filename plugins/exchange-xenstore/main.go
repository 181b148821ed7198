// Command guest-agent-exchange-xenstore is the exchange plugin for Xen
// guests: it serves OpenStack's XenStore agent protocol (nova-agent) with a
// WATCH on data/host instead of nova-agent's one-second poll.
//
// The host writes a request as data/host/<id> (relative to the domain's
// home); the answer goes to data/guest/<id> and the request key is removed,
// both in one XenStore transaction, so a request is answered exactly once
// even across xenstored restarts, reconnects and restarts of the agent (see
// server.go for the reasoning).
//
// Each request is handed to the parser (dialect "nova") as one message of a
// message session (shared/session), so the exchange never decodes JSON.
package main

import "github.com/guest-agent/guest-agent/shared/sdk"

// version is set at link time (-X main.version=...).
var version = "dev"

func main() {
	sdk.ServeExchange(&sdk.ExchangePlugin{
		Name:     "exchange-xenstore",
		Version:  version,
		Methods:  []string{methodXenstore},
		Exchange: &Exchange{},
	})
}

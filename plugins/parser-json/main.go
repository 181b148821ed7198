// Command guest-agent-parser-json decodes and encodes the JSON dialects of
// guest agents: qga (QEMU guest agent) today, the others as they land.
package main

import "github.com/guest-agent/guest-agent/shared/sdk"

// version is set by the build (-X main.version).
var version = "dev"

func main() {
	sdk.ServeParser(&sdk.ParserPlugin{
		Name:     "parser-json",
		Version:  version,
		Dialects: dialects(),
	})
}

func dialects() []sdk.Dialect {
	return []sdk.Dialect{&qgaDialect{}, &novaDialect{}, &negotiatorDialect{}, &monitorDialect{}}
}

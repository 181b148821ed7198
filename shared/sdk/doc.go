// Package sdk is what a plugin author imports: one interface and one Serve
// call per plugin kind (ServeCommands, ServeExchange, ServeParser), the
// errors handlers return, and the JSON and base64 helpers of the wire
// protocol. Plugins run as their own processes, launched by the guest-agent
// supervisor through github.com/hashicorp/go-plugin over gRPC; the glue for
// that lives in package rpcplugin, the parser engine in package engine, and
// the contract between the engine and a dialect in package dialect (its
// types are re-exported here).
package sdk

// Package engine is the parser plugin's engine: it runs the dialects of
// package dialect over the sessions exchanges hand over, and routes their
// commands to command plugins. It knows no dialect: each brings its local
// commands, its error texts and whether its replies keep request order
// (dialect.Options). Package sdk's ServeParser serves it; the
// parser's tests drive it in process (New, Configure, an inbox).
//
// Where a request goes, by file:
//
//   - engine.go, configure.go: the engine, its limits and Configure (channels,
//     routes, inboxes); parse.go: ParseRequest.
//   - feeds.go: the inbox feeds of exchanges (hand-offs, host events), the
//     handed-over listeners' accept loop, message sessions;
//     virtiowatch.go: the SIGIO watch of a handed-over virtio-serial port.
//   - stream.go: a stream session (reads, whole-reply writes, the epochs that
//     drop stale replies, waiting for a host); queues.go: Go, each plugin's
//     commands of a session in arrival order; order.go: replies in request
//     order for a dialect that asks it.
//   - routing.go: which plugin serves a command on a channel, and whether it
//     may run there (allow/block lists, the frozen state, the dialect).
//   - dispatch.go: one command's steps (a local command of the dialect, or
//     route, refuse, request, run, shape), and the Failure of what the
//     engine refused or failed itself;
//     blobs.go: a bulk argument out of the JSON into the request's blob.
//   - plugins.go: the lazy data-plane connections to command plugins.
//   - readahead.go: read-ahead of file reads; budget.go: memory budgets and
//     write deadlines; freeze.go: the frozen state and its deadline.
package engine

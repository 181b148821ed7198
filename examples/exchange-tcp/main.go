// Command guest-agent-exchange-tcp is an exchange plugin: it serves channels
// of method "tcp-listen" on a loopback address, handing each accepted
// connection to the channel's parser. Written the way a third party writes
// one, against the shared module only.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/guest-agent/guest-agent/shared/sdk"
	"github.com/guest-agent/guest-agent/shared/session"
)

type tcpListen struct{}

// Open binds the channel's path ("127.0.0.1:4444") and accepts in the
// background until ctx ends: the supervisor closes the channel, or the
// parser went away.
func (tcpListen) Open(ctx context.Context, ch sdk.Channel, out *session.Outbox) (string, error) {
	addr, err := net.ResolveTCPAddr("tcp", ch.Path)
	if err != nil {
		return "", fmt.Errorf("tcp-listen %q: %w", ch.Path, err)
	}
	// TCP carries no peer credentials: whoever reaches the port may run
	// every command the channel allows. Loopback keeps that inside the guest.
	if !addr.IP.IsLoopback() {
		return "", fmt.Errorf("tcp-listen %q: only a loopback address may be listened on", ch.Path)
	}
	ln, err := net.ListenTCP("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("tcp-listen: %w", err)
	}
	go func() { <-ctx.Done(); ln.Close() }()
	go accept(ch, out, ln)
	return ln.Addr().String(), nil
}

func accept(ch sdk.Channel, out *session.Outbox, ln *net.TCPListener) {
	for n := 1; ; n++ {
		conn, err := ln.AcceptTCP()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // out of descriptors: the ones held are given back some day
			ch.Logger.Warn("accept failed; retrying", "error", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		ev := session.Event{
			Type: session.EventHandoff, Channel: ch.Name, Kind: session.KindStream,
			Session: fmt.Sprintf("tcp-%d", n), Origin: "tcp:" + conn.RemoteAddr().String(),
		}
		// Send takes the connection itself, never conn.File().Fd(): that
		// would make the descriptor, shared with the parser, blocking. The
		// parser keeps its own copy, and the session ends when this process
		// does (the supervisor restarts it and the channel is reopened).
		if err := out.Send(ev, conn); err != nil {
			ch.Logger.Warn("connection not handed to the parser", "origin", ev.Origin, "error", err)
		}
		conn.Close()
	}
}

func main() {
	sdk.ServeExchange(&sdk.ExchangePlugin{
		Name:     "exchange-tcp",
		Version:  "1.0.0",
		Methods:  []string{"tcp-listen"},
		Exchange: tcpListen{},
	})
}

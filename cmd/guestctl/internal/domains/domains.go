// Package domains finds the guests of a host and the unix socket of one of
// their channels: the agent's (org.qemu.guest_agent.0), negotiator's
// (negotiator-guest-to-host.0) or any other virtio-serial port a domain
// exposes as <channel type='unix'>.
//
// Three sources, one interface:
//
//   - Virsh asks libvirt (virsh list --name, virsh dumpxml), with an
//     optional --connect URI: what libvirt says is the truth, for any
//     driver and any URI it reaches.
//   - RuntimeDir reads libvirt's status files of running domains
//     (/run/libvirt/qemu/NAME.xml): no daemon round trip and no process per
//     domain, which is what a host with hundreds of guests wants.
//   - SocketDir takes every unix socket in a directory as one guest, named
//     after the file: QEMU started by hand (-chardev socket,path=DIR/NAME.sock)
//     or a directory of test responders.
//
// Domain XML is parsed with encoding/xml, never from text meant for people.
package domains

import (
	"context"
	"errors"
	"fmt"
)

// AgentChannel is the channel target name of QEMU's guest agent.
const AgentChannel = "org.qemu.guest_agent.0"

// Guest is one running guest and where its channel is.
type Guest struct {
	// Name is the libvirt domain's name, or the socket's for SocketDir.
	Name string `json:"name"`
	// Socket is the host-side unix socket of the channel asked for; empty
	// when the domain has no such <channel type='unix'>.
	Socket string `json:"socket,omitempty"`
	// State is libvirt's view of the guest side of the channel
	// ("connected" once a program in the guest opened the port,
	// "disconnected"), when libvirt reports it; empty otherwise.
	State string `json:"state,omitempty"`
}

// Source lists guests and finds one by name.
type Source interface {
	// Guests lists the running guests, each with the socket of its channel
	// named target (empty Socket when it has none), sorted by name.
	Guests(ctx context.Context, target string) ([]Guest, error)
	// Find returns the running guest name with the socket of its channel
	// named target: ErrNotFound when there is no such running guest,
	// ErrNoChannel when it has no unix channel of that name.
	Find(ctx context.Context, name, target string) (Guest, error)
}

// ErrNotFound is returned by Find for a guest that is not running (or does
// not exist); ErrNoChannel for a guest without the channel asked for.
var (
	ErrNotFound  = errors.New("no running guest of that name")
	ErrNoChannel = errors.New("guest has no unix channel of that name")
)

// FindSocket is Find that returns only the socket, with an error naming
// the guest and the channel.
func FindSocket(ctx context.Context, s Source, name, target string) (string, error) {
	g, err := s.Find(ctx, name, target)
	if err != nil {
		return "", fmt.Errorf("guest %q, channel %s: %w", name, target, err)
	}
	return g.Socket, nil
}

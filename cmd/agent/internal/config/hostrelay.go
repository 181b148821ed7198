package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// Defaults of the negotiator_host block.
const (
	DefaultHostRelayPort    = "/dev/virtio-ports/negotiator-guest-to-host.0"
	DefaultHostRelaySocket  = "/run/guest-agent/negotiator-host.sock"
	DefaultHostRelayTimeout = 10 * time.Second
)

// HostRelay makes the agent hold negotiator's guest-to-host port and pass
// the calls of programs inside the guest (guest-agent host) to the host
// one at a time, so that callers wait their turn instead of failing to open
// a port that has one opener at a time (EBUSY). Off unless the block is
// given:
//
//	negotiator_host { enabled = true }
type HostRelay struct {
	Enabled bool `hcl:"enabled,optional"`
	// Port is the guest-to-host virtio-serial port (default
	// /dev/virtio-ports/negotiator-guest-to-host.0; a port name alone is
	// looked up in /sys/class/virtio-ports).
	Port string `hcl:"port,optional"`
	// Socket is where guest-agent host finds the agent (default
	// /run/guest-agent/negotiator-host.sock, mode 0660).
	Socket string `hcl:"socket,optional"`
	// Timeout bounds one call to the host, waiting for the port included
	// (default "10s"; "0": none).
	Timeout string `hcl:"timeout,optional"`
}

// RelayTimeout is the block's timeout; 0 is none.
func (h *HostRelay) RelayTimeout() (time.Duration, error) {
	if h == nil || h.Timeout == "" {
		return DefaultHostRelayTimeout, nil
	}
	if h.Timeout == "0" || h.Timeout == "off" {
		return 0, nil
	}
	d, err := time.ParseDuration(h.Timeout)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("negotiator_host: timeout %q: want a duration such as \"10s\", or 0", h.Timeout)
	}
	return d, nil
}

// RelayPort and RelaySocket are the block's paths with their defaults.
func (h *HostRelay) RelayPort() string   { return orString(h.Port, DefaultHostRelayPort) }
func (h *HostRelay) RelaySocket() string { return orString(h.Socket, DefaultHostRelaySocket) }

func (c *Agent) validateHostRelay() error {
	h := c.HostRelay
	if h == nil {
		return nil
	}
	if _, err := h.RelayTimeout(); err != nil {
		return err
	}
	if !filepath.IsAbs(h.RelaySocket()) {
		return fmt.Errorf("negotiator_host: socket %q is not an absolute path", h.Socket)
	}
	return nil
}

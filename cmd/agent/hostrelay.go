package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	"github.com/guest-agent/guest-agent/shared/negotiator"
	"github.com/hashicorp/go-hclog"
)

// hostRelay holds negotiator's guest-to-host port for the programs of the
// guest (negotiator_host in agent.hcl): each connection to its socket is a
// caller, and the callers' requests go to the host one at a time, in the
// order they get their turn, each with its reply. The port allows one
// opener; through the relay nobody gets EBUSY.
type hostRelay struct {
	port    string
	timeout time.Duration
	log     hclog.Logger

	turn chan struct{} // the port's turn: one call on it at a time
	open io.ReadWriteCloser
	r    *bufio.Reader
}

// startHostRelay listens on the block's socket; the returned stop closes
// it and the port.
func startHostRelay(ctx context.Context, c *config.HostRelay, log hclog.Logger) (func(), error) {
	timeout, err := c.RelayTimeout()
	if err != nil {
		return nil, err
	}
	sock := c.RelaySocket()
	if err := os.MkdirAll(filepath.Dir(sock), 0o711); err != nil {
		return nil, fmt.Errorf("negotiator_host: %w", err)
	}
	_ = os.Remove(sock) // a stale socket of an earlier run
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("negotiator_host: %w", err)
	}
	if err := os.Chmod(sock, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("negotiator_host: %w", err)
	}
	h := &hostRelay{port: c.RelayPort(), timeout: timeout, log: log.Named("negotiator-host"), turn: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				h.serveCaller(ctx, conn)
			}()
		}
	}()
	h.log.Info("relaying calls to the host", "socket", sock, "port", h.port)
	return func() {
		cancel()
		ln.Close()
		wg.Wait()
		h.closePort()
	}, nil
}

// serveCaller passes one caller's requests on, in order.
func (h *hostRelay) serveCaller(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReader(conn)
	for {
		body, err := negotiator.ReadFrame(r, negotiator.DefaultMaxMessageBytes)
		var reply []byte
		switch {
		case err == nil:
			reply, err = h.call(ctx, body)
			if err != nil {
				reply = negotiator.EncodeError(err.Error())
			}
		case negotiator.IsFrameError(err):
			reply = negotiator.EncodeError(err.Error())
		default:
			return // the caller left
		}
		if err := negotiator.WriteFrame(conn, reply); err != nil {
			return
		}
	}
}

// call waits for the port's turn and makes one exchange with the host,
// all within the timeout. A failed exchange closes the port: a late reply
// must not be taken for the next caller's.
func (h *hostRelay) call(ctx context.Context, req []byte) ([]byte, error) {
	if h.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, h.timeout)
		defer cancel()
	}
	select {
	case h.turn <- struct{}{}:
		defer func() { <-h.turn }()
	case <-ctx.Done():
		return nil, fmt.Errorf("no turn on the host's port within the timeout: %w", context.Cause(ctx))
	}
	if h.open == nil {
		dev, err := findHostPort(h.port)
		if err != nil {
			return nil, err
		}
		port, err := openHostPort(ctx, dev)
		if err != nil {
			return nil, err
		}
		h.open, h.r = port, bufio.NewReaderSize(port, 64<<10)
	}
	d, _ := h.open.(interface{ SetDeadline(time.Time) error })
	if d != nil {
		dl, _ := ctx.Deadline()
		_ = d.SetDeadline(dl)
		stop := context.AfterFunc(ctx, func() { _ = d.SetDeadline(time.Unix(1, 0)) })
		defer stop()
	}
	reply, err := h.exchange(req)
	if err != nil {
		h.log.Warn("call to the host failed; the port is reopened for the next one", "error", err)
		h.closePort()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no reply from the host within the timeout (%s)", h.timeout)
		}
		return nil, fmt.Errorf("call to the host failed: %w", err)
	}
	return reply, nil
}

func (h *hostRelay) exchange(req []byte) ([]byte, error) {
	if err := negotiator.WriteFrame(h.open, req); err != nil {
		return nil, err
	}
	reply, err := negotiator.ReadFrame(h.r, negotiator.DefaultMaxMessageBytes)
	if errors.Is(err, io.EOF) {
		err = errors.New("the host closed the channel")
	}
	return reply, err
}

func (h *hostRelay) closePort() {
	if h.open != nil {
		h.open.Close()
		h.open, h.r = nil, nil
	}
}

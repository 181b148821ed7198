package domains

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// IsRemote tells whether a libvirt URI names another host (qemu+ssh://h/,
// qemu+tls://h/system, ...): the sockets in its domains' XML lie there.
func IsRemote(uri string) bool {
	u, err := url.Parse(uri)
	if err != nil {
		return false
	}
	return u.Host != "" || strings.Contains(u.Scheme, "+") && !strings.HasSuffix(u.Scheme, "+unix")
}

// Bridge is a local unix socket that speaks the agent protocol and passes
// every command to domain name's agent through libvirt (virsh
// qemu-agent-command): the way to reach the agent of a domain on another
// host, where libvirt's remote protocol is the transport. Syncs are
// answered by the bridge itself (libvirt syncs with the agent before
// every command); each command is one virsh run, one at a time, as
// libvirt runs agent commands.
type Bridge struct {
	v      Virsh
	domain string
	// Timeout is virsh qemu-agent-command's --timeout for each command.
	Timeout time.Duration
	l       net.Listener
	dir     string
}

// NewBridge listens on a socket in a new temporary directory; Close
// removes it.
func (v Virsh) NewBridge(domain string, timeout time.Duration) (*Bridge, error) {
	dir, err := os.MkdirTemp("", "guestctl-bridge")
	if err != nil {
		return nil, fmt.Errorf("libvirt bridge: %w", err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "agent.sock"))
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("libvirt bridge: %w", err)
	}
	b := &Bridge{v: v, domain: domain, Timeout: timeout, l: l, dir: dir}
	go b.serve()
	return b, nil
}

// Socket is where to connect.
func (b *Bridge) Socket() string { return b.l.Addr().String() }

// Close stops the bridge and removes its socket.
func (b *Bridge) Close() error {
	err := b.l.Close()
	os.RemoveAll(b.dir)
	return err
}

func (b *Bridge) serve() {
	for {
		c, err := b.l.Accept()
		if err != nil {
			return
		}
		go b.serveConn(c)
	}
}

func (b *Bridge) serveConn(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		line = bytes.TrimLeft(line, "\xff")
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if _, err := c.Write(b.answer(line)); err != nil {
			return
		}
	}
}

// answer runs one request and returns its reply line.
func (b *Bridge) answer(line []byte) []byte {
	var req struct {
		Execute   string          `json:"execute"`
		Arguments json.RawMessage `json:"arguments"`
		ID        json.RawMessage `json:"id"`
	}
	if err := json.Unmarshal(line, &req); err != nil {
		return reply(nil, nil, "GenericError", "bridge: the request is not JSON: "+err.Error())
	}
	switch req.Execute {
	case "guest-sync", "guest-sync-delimited":
		var a struct {
			ID json.RawMessage `json:"id"`
		}
		_ = json.Unmarshal(req.Arguments, &a)
		out := reply(req.ID, a.ID, "", "")
		if req.Execute == "guest-sync-delimited" {
			out = append([]byte{0xff}, out...)
		}
		return out
	}
	cmd := map[string]any{"execute": req.Execute}
	if len(req.Arguments) > 0 {
		cmd["arguments"] = req.Arguments
	}
	body, _ := json.Marshal(cmd)
	secs := int(b.Timeout / time.Second)
	if secs < 1 {
		secs = 5
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(secs+10)*time.Second)
	defer cancel()
	out, err := b.v.run(ctx, "qemu-agent-command", "--timeout", strconv.Itoa(secs), "--domain", b.domain, "--cmd", string(body))
	if err != nil {
		return reply(req.ID, nil, "GenericError", err.Error())
	}
	var got struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		return reply(req.ID, nil, "GenericError", fmt.Sprintf("bridge: virsh printed %q", out))
	}
	if got.Error != nil {
		return reply(req.ID, nil, got.Error.Class, got.Error.Desc)
	}
	return reply(req.ID, got.Return, "", "")
}

// reply encodes {"return": ret} or {"error": ...} with the request's id.
func reply(id, ret json.RawMessage, class, desc string) []byte {
	m := map[string]any{}
	if class != "" {
		m["error"] = map[string]string{"class": class, "desc": desc}
	} else {
		if ret == nil {
			ret = json.RawMessage("{}")
		}
		m["return"] = ret
	}
	if id != nil {
		m["id"] = id
	}
	b, _ := json.Marshal(m)
	return append(b, '\n')
}

package domains

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
)

// Virsh asks libvirt through the virsh client.
type Virsh struct {
	// Connect is passed as virsh --connect; empty: virsh's default URI
	// (LIBVIRT_DEFAULT_URI, then qemu:///system for root, qemu:///session
	// otherwise). For a URI of another host the sockets lie on that host.
	Connect string
	// Program is the virsh binary; empty: "virsh" from PATH.
	Program string
	// Parallel bounds the virsh dumpxml processes run at once by Guests;
	// 0 means 8.
	Parallel int
}

// run runs virsh with args in the C locale and returns its standard output.
func (v Virsh) run(ctx context.Context, args ...string) ([]byte, error) {
	prog := v.Program
	if prog == "" {
		prog = "virsh"
	}
	if v.Connect != "" {
		args = append([]string{"--connect", v.Connect}, args...)
	}
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "failed to get domain") || strings.Contains(msg, "Domain not found") {
			return nil, ErrNotFound
		}
		if msg == "" {
			return nil, fmt.Errorf("virsh %s: %w", strings.Join(args, " "), err)
		}
		return nil, fmt.Errorf("virsh %s: %w: %s", strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// Names lists the running domains (virsh list --name).
func (v Virsh) Names(ctx context.Context) ([]string, error) {
	out, err := v.run(ctx, "list", "--name")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			names = append(names, line)
		}
	}
	sort.Strings(names)
	return names, nil
}

// Domain returns the parsed XML of domain name (virsh dumpxml).
func (v Virsh) Domain(ctx context.Context, name string) (Domain, error) {
	out, err := v.run(ctx, "dumpxml", "--", name)
	if err != nil {
		return Domain{}, err
	}
	return ParseDomainXML(out)
}

// Guests lists the running domains with the socket of channel target.
func (v Virsh) Guests(ctx context.Context, target string) ([]Guest, error) {
	names, err := v.Names(ctx)
	if err != nil {
		return nil, err
	}
	parallel := v.Parallel
	if parallel <= 0 {
		parallel = 8
	}
	guests := make([]Guest, len(names))
	errs := make([]error, len(names))
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			d, err := v.Domain(ctx, name)
			if err != nil {
				errs[i] = fmt.Errorf("domain %q: %w", name, err)
				return
			}
			guests[i] = d.guest(target)
		}()
	}
	wg.Wait()
	// A domain that stopped between list and dumpxml is not running any
	// more: left out, as a later list would.
	out := guests[:0]
	for i, g := range guests {
		switch {
		case errors.Is(errs[i], ErrNotFound):
		case errs[i] != nil:
			return nil, errs[i]
		default:
			out = append(out, g)
		}
	}
	return out, nil
}

// Find returns running domain name with the socket of channel target.
func (v Virsh) Find(ctx context.Context, name, target string) (Guest, error) {
	d, err := v.Domain(ctx, name)
	if err != nil {
		return Guest{}, err
	}
	return findIn(d, target)
}

func findIn(d Domain, target string) (Guest, error) {
	if !d.Running {
		return Guest{}, ErrNotFound
	}
	g := d.guest(target)
	if g.Socket == "" {
		return Guest{}, ErrNoChannel
	}
	return g, nil
}

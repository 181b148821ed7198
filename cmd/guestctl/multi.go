package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/guest-agent/guest-agent/cmd/guestctl/internal/domains"
	"github.com/spf13/cobra"
)

// guestTarget is one guest of a run over several.
type guestTarget struct {
	name   string
	socket string
	err    error // finding it failed: reported as that guest's failure
}

// multi tells whether the command runs over several guests.
func (o *options) multi() bool { return o.targets != nil }

// oneGuest refuses several guests for a command that takes one.
func (o *options) oneGuest(cmd string) error {
	if o.multi() {
		return fmt.Errorf("%s takes one guest: not with --all or several --domain names", cmd)
	}
	return nil
}

// resolveTargets finds the guests of --all (every running guest with an
// agent channel) or of --domain a,b,...
func (o *options) resolveTargets(ctx context.Context) error {
	src := o.guests.source()
	if o.all {
		guests, err := src.Guests(ctx, domains.AgentChannel)
		if err != nil {
			return err
		}
		o.targets = []guestTarget{}
		for _, g := range guests {
			if g.Socket == "" {
				continue
			}
			t := guestTarget{name: g.Name, socket: g.Socket}
			if o.guests.throughLibvirt() {
				t.socket, t.err = o.guests.bridgeFor(g.Name, o.timeout)
			}
			o.targets = append(o.targets, t)
		}
		if len(o.targets) == 0 {
			return errors.New("--all: no running guest has an agent channel")
		}
		return nil
	}
	for _, name := range strings.Split(o.guests.domain, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		sock, err := o.guests.socketOf(ctx, name, domains.AgentChannel, o.timeout)
		o.targets = append(o.targets, guestTarget{name: name, socket: sock, err: err})
	}
	return nil
}

// result is what an operation on one guest gives: text for people (one
// or more lines) and a value for --json.
type result struct {
	text  string
	value any
	code  int // exec: the command's exit code, 0 otherwise
}

// guestOp is one command's work on one guest.
type guestOp func(ctx context.Context, a *agent) (result, error)

// runOp runs op on the --socket/--domain guest, or on every guest of a
// multi-guest run, and prints what it gives.
func runOp(cmd *cobra.Command, o *options, op guestOp) error {
	ctx := cmdContext(cmd)
	if !o.multi() {
		a, err := openSession(ctx, o, o.socket)
		if err != nil {
			return err
		}
		defer a.Close()
		r, err := op(ctx, a)
		if err != nil {
			return err
		}
		if err := printResult(cmd.OutOrStdout(), o, r); err != nil {
			return err
		}
		if r.code != 0 {
			return exitCode(r.code)
		}
		return nil
	}
	if failed := runAll(ctx, o, cmd.OutOrStdout(), op); failed > 0 {
		fmt.Fprintf(cmd.ErrOrStderr(), "guestctl: %d of %d guests failed\n", failed, len(o.targets))
		return exitCode(1)
	}
	return nil
}

func printResult(w io.Writer, o *options, r result) error {
	if o.json {
		b, err := json.Marshal(r.value)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := io.WriteString(w, r.text)
	return err
}

// guestLine is the --json line of one guest in a multi-guest run.
type guestLine struct {
	Guest  string `json:"guest"`
	OK     bool   `json:"ok"`
	Result any    `json:"result,omitempty"`
	Error  string `json:"error,omitempty"`
	Ms     int64  `json:"ms"`
}

// runAll runs op on every target, at most --parallel at once, each guest
// within --timeout, and prints one line (or one JSON object) per guest as
// each finishes: "NAME: text" for each line of its text. It returns how
// many failed (an exec that exited non-zero counts).
func runAll(ctx context.Context, o *options, w io.Writer, op guestOp) int {
	var (
		mu     sync.Mutex
		failed int
		wg     sync.WaitGroup
	)
	sem := make(chan struct{}, max(o.parallel, 1))
	emit := func(t guestTarget, r result, err error, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil || r.code != 0 {
			failed++
		}
		if o.json {
			line := guestLine{Guest: t.name, OK: err == nil && r.code == 0, Result: r.value, Ms: took.Milliseconds()}
			if err != nil {
				line.Error = err.Error()
			}
			b, _ := json.Marshal(line)
			fmt.Fprintf(w, "%s\n", b)
			return
		}
		if err != nil {
			fmt.Fprintf(w, "%s: error: %v\n", t.name, err)
			return
		}
		for _, l := range strings.Split(strings.TrimSuffix(r.text, "\n"), "\n") {
			fmt.Fprintf(w, "%s: %s\n", t.name, l)
		}
	}
	for _, t := range o.targets {
		if t.err != nil {
			emit(t, result{}, t.err, 0)
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			start := time.Now()
			gctx, cancel := context.WithTimeout(ctx, o.timeout)
			defer cancel()
			r, err := func() (result, error) {
				a, err := openSession(gctx, o, t.socket)
				if err != nil {
					return result{}, err
				}
				defer a.Close()
				return op(gctx, a)
			}()
			if err != nil && gctx.Err() != nil && ctx.Err() == nil {
				err = fmt.Errorf("no answer within %s: %w", o.timeout, err)
			}
			emit(t, r, err, time.Since(start))
		}()
	}
	wg.Wait()
	return failed
}

package xen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/shared/xenstore"
	"github.com/guest-agent/guest-agent/shared/xenstore/oxenstored"
)

// BenchmarkNovaRoundTrip measures what nova's dom0 plugin waits for: from
// writing data/host/<id> to data/guest/<id> appearing, through the real
// oxenstored.
//
//   - watch: the real agent (supervisor, exchange-xenstore, parser-json,
//     cmd-nova: "version"), woken by its XenStore watch.
//   - poll-1s: the original design's exchange, which lists data/host once a
//     second (nova-agent's main loop: action(), then time.sleep(1)), with a
//     trivial answer; its latency is the wait for the next poll.
//
// Run: GUEST_AGENT_BIN=$PWD/bin go test -run '^$' -bench NovaRoundTrip ./xen/
// (from tests/; -short skips poll-1s, which takes about half a second per
// operation).
func BenchmarkNovaRoundTrip(b *testing.B) {
	d := oxenstored.Start(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := xenstore.Dial(ctx, d.Path())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()

	b.Run("watch", func(b *testing.B) {
		startAgent(b, d, nil)
		roundTrips(b, ctx, c, domHome, `{"name":"version","value":""}`, 0)
	})
	b.Run("poll-1s", func(b *testing.B) {
		if testing.Short() {
			b.Skip("-short")
		}
		// Domain 1's keys: the agent (dom0's home) does not see them.
		const home = "/local/domain/1"
		pctx, stop := context.WithCancel(ctx)
		defer stop()
		go poller(pctx, c, home, time.Second)
		// Requests arrive at random moments of the poll cycle.
		roundTrips(b, ctx, c, home, `{"name":"version","value":""}`, time.Second)
	})
}

// roundTrips writes b.N requests one after the other under home/data/host
// and waits for each answer; it reports p50 and p99 besides ns/op. With
// jitter, each request waits a random time below it first (not counted).
func roundTrips(b *testing.B, ctx context.Context, c *xenstore.Client, home, request string, jitter time.Duration) {
	b.Helper()
	w, err := c.Watch(ctx, home+"/data/guest", "")
	if err != nil {
		b.Fatal(err)
	}
	defer w.Unwatch(ctx)
	<-w.Events() // the registration event
	// The first request also covers the agent's and cmd-nova's start.
	roundTrip(b, ctx, c, w, home, request)

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		if jitter > 0 {
			b.StopTimer()
			time.Sleep(rand.N(jitter))
			b.StartTimer()
		}
		lat = append(lat, roundTrip(b, ctx, c, w, home, request))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds()), "p99-µs")
}

func roundTrip(b *testing.B, ctx context.Context, c *xenstore.Client, w *xenstore.Watch, home, request string) time.Duration {
	id := uuid4()
	answer := home + "/data/guest/" + id
	start := time.Now()
	if err := c.Write(ctx, home+"/data/host/"+id, []byte(request)); err != nil {
		b.Fatal(err)
	}
	timeout := time.NewTimer(answerTimeout)
	defer timeout.Stop()
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				b.Fatalf("watch ended: %v", w.Err())
			}
			if ev.Path != answer {
				continue
			}
		case <-timeout.C:
			b.Fatalf("no answer to %s", id)
		}
		v, err := c.Read(ctx, answer)
		if errors.Is(err, xenstore.ErrNotFound) {
			continue
		}
		if err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		if !strings.Contains(string(v), `"returncode":"0"`) {
			b.Fatalf("answer %s", v)
		}
		// nova leaves answers behind; the benchmark keeps the store small.
		_ = c.Rm(ctx, answer)
		return elapsed
	}
}

// poller is the original design's exchange: every interval, list
// data/host, then for each request remove it and write the answer.
func poller(ctx context.Context, c *xenstore.Client, home string, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		names, _ := c.Directory(ctx, home+"/data/host")
		for _, n := range names {
			if _, err := c.Read(ctx, home+"/data/host/"+n); err != nil {
				continue
			}
			_ = c.Rm(ctx, home+"/data/host/"+n)
			_ = c.Write(ctx, home+"/data/guest/"+n, []byte(fmt.Sprintf(`{"returncode":"0","message":"%s"}`, "poll")))
		}
	}
}

package vm

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/guest-agent/guest-agent/tests/harness"
)

// reconnectRounds is how many short host connections the storm makes: each
// one as libvirt makes them (connect, resync within 5 s, one command that a
// plugin serves, leave), every third one after a fire-and-forget host.
const reconnectRounds = 60

// checkReconnectStorm drives the port the way a busy host does: many
// short connections back to back, some of them fire-and-forget. Each host
// must get its own sync and its own command's reply; a reply dropped as
// belonging to a host that left (an EOF read late, a host event merged with
// the next one) shows as a command that is never answered.
func checkReconnectStorm(t *testing.T, vm *vmInstance) {
	var slowest time.Duration
	start := time.Now()
	for i := 0; i < reconnectRounds; i++ {
		if i%3 == 2 {
			c := dialRetry(t, vm.socket)
			if _, err := c.Write([]byte(`{"execute":"guest-get-time"}` + "\n")); err != nil {
				t.Fatalf("round %d: fire-and-forget: %v", i, err)
			}
			c.Close()
		}
		roundStart := time.Now()
		c := dialRetry(t, vm.socket)
		if stale, err := c.SyncDelimited(7000+i, 5*time.Second); err != nil {
			c.Close()
			t.Fatalf("round %d: %v (stale lines %q)", i, err, stale)
		}
		line, err := c.Call(fmt.Sprintf(`{"execute":"guest-get-host-name","id":%d}`+"\n", i))
		c.Close()
		if err != nil {
			t.Fatalf("round %d: guest-get-host-name after a sync never answered: %v", i, err)
		}
		r, _ := harness.Decode(t, line)
		if r.Error != nil || !strings.Contains(string(r.Return), "host-name") || string(r.ID) != fmt.Sprint(i) {
			t.Fatalf("round %d: not this host's reply: %q", i, line)
		}
		slowest = max(slowest, time.Since(roundStart))
	}
	t.Logf("%d short host connections (a third after a fire-and-forget host) in %s, slowest %s",
		reconnectRounds, time.Since(start).Round(time.Millisecond), slowest.Round(time.Millisecond))
}

package vm

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// checkFireAndForget: a host writes one request and closes the port's
// socket at once (printf '...' | socat - UNIX-CONNECT:...). qemu-ga runs it
// at once; so must the agent, not when the next host connects, and its
// reply must never reach that next host.
func checkFireAndForget(t *testing.T, vm *vmInstance) {
	c := dialRetry(t, vm.socket)
	req := `{"execute":"guest-exec","arguments":{"path":"/bin/sh","arg":["-c","date +%s > /tmp/fire-and-forget"]}}` + "\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	const away = 4 * time.Second
	time.Sleep(away) // no host connected meanwhile

	c = dialRetry(t, vm.socket)
	defer c.Close()
	// The next host syncs as libvirt does: the first line it reads must be
	// its own sync's reply, not the reply to the earlier host's request.
	stale, err := c.SyncDelimited(9090, 10*time.Second)
	if err != nil {
		t.Fatalf("sync after a fire-and-forget request: %v", err)
	}
	if len(stale) != 0 {
		t.Fatalf("the next host's first line is not its sync's reply: %q", stale)
	}
	out := guestSh(t, c, "cat /tmp/fire-and-forget 2>/dev/null || echo none; date +%s")
	fields := strings.Fields(out)
	if len(fields) != 2 || fields[0] == "none" {
		t.Fatalf("the fire-and-forget request did not run: %q", out)
	}
	ran, _ := strconv.Atoi(fields[0])
	now, _ := strconv.Atoi(fields[1])
	t.Logf("fire-and-forget request ran %d s before the next host came", now-ran)
	if now-ran < int(away/time.Second)-2 {
		t.Fatalf("the request ran when the next host came (%d s before it), not when it was sent: %s", now-ran, fmt.Sprint(fields))
	}
}

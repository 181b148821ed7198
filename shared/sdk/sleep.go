package sdk

import (
	"context"
	"time"
)

// Sleep waits d, or less when ctx ends first, and tells whether the whole
// wait passed: the pause of a plugin's retry loop (an exchange reconnecting
// to its transport, accepting again after running out of descriptors) that
// must not outlive its channel.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

package main

import (
	"os"
	"path/filepath"
	"testing"
)

type trimJSON struct {
	Paths []struct {
		Path    string  `json:"path"`
		Trimmed *uint64 `json:"trimmed"`
		Minimum *uint64 `json:"minimum"`
		Error   *string `json:"error"`
	} `json:"paths"`
}

// TestFstrimRealFilesystem trims the test's own ext4 (the stand-in mount
// table lists nothing else) and a mountpoint that cannot be opened.
func TestFstrimRealFilesystem(t *testing.T) {
	fs := mountTestFS(t)
	// Free some blocks so there is something to discard.
	big := filepath.Join(fs.mnt, "big")
	if err := os.WriteFile(big, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(big); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(t.TempDir(), "gone")
	proc := fakeProc(t,
		"50 1 250:9 / "+gone+" rw - ext4 /dev/nothing rw",
		fs.mountinfo)
	tp := newTestPlugin(t, map[string]any{"proc_root": proc})
	var res trimJSON
	tp.ok("guest-fstrim", `{"minimum":4096}`, &res)
	if len(res.Paths) != 2 {
		t.Fatalf("paths %+v", res.Paths)
	}
	// Reverse mount order, as qemu-ga prepends.
	ours, missing := res.Paths[0], res.Paths[1]
	if ours.Path != fs.mnt || missing.Path != gone {
		t.Fatalf("order: %s, %s", ours.Path, missing.Path)
	}
	if missing.Error == nil || *missing.Error != "failed to open: No such file or directory" || missing.Trimmed != nil {
		t.Errorf("unopenable mount: %+v", missing)
	}
	switch {
	case ours.Error != nil:
		// A loop device over a filesystem without hole punching cannot discard.
		if *ours.Error != "trim not supported" {
			t.Errorf("trim of the test filesystem: %s", *ours.Error)
		}
	case ours.Trimmed == nil || ours.Minimum == nil:
		t.Errorf("trimmed/minimum missing: %+v", ours)
	default:
		t.Logf("trimmed %d bytes, effective minimum %d", *ours.Trimmed, *ours.Minimum)
		if *ours.Minimum < 4096 {
			t.Errorf("effective minimum %d below the requested 4096", *ours.Minimum)
		}
		if *ours.Trimmed == 0 || *ours.Trimmed > 64<<20 {
			t.Errorf("trimmed %d bytes of a 64 MiB filesystem with 8 MiB just freed", *ours.Trimmed)
		}
	}
	tp.fails("guest-fstrim", `{"minimum":"x"}`, generic, "Invalid parameter type for 'minimum', expected: integer")
}

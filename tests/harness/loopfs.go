package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// LoopFS mounts a fresh 16 MiB ext4 image (never the machine's own
// filesystems, which a freeze test must not touch) and returns its
// mountpoint; cleanup thaws it, whatever the test left, and unmounts it.
func LoopFS(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a loop device")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (e2fsprogs): %v: %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount -o loop: %v: %s", err, out)
	}
	t.Cleanup(func() {
		_ = exec.Command("fsfreeze", "--unfreeze", mnt).Run() // EINVAL when not frozen
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

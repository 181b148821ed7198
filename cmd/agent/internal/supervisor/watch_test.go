package supervisor

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The inotify watch wakes for what may change the plugins only, follows a
// plugin directory created after it started, and one removed and created
// again.
func TestDirWatchEvents(t *testing.T) {
	dir := t.TempDir()
	later := filepath.Join(t.TempDir(), "plugins.d")
	w, err := newDirWatch([]string{dir, later})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	buf := make([]byte, 16*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	expect := func(want bool, what string, do func()) {
		t.Helper()
		do()
		if err := w.file.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		got, err := w.next(buf)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if got != want {
			t.Errorf("%s: relevant = %v, want %v", what, got, want)
		}
	}
	write := func(path string) func() {
		return func() {
			if err := os.WriteFile(path, []byte("x"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	expect(false, "another file written", write(filepath.Join(dir, "notes")))
	expect(true, "a plugin binary written", write(filepath.Join(dir, "guest-agent-x")))
	expect(true, "a plugin renamed in", func() {
		write(filepath.Join(dir, ".tmp"))()
		if err := os.Rename(filepath.Join(dir, ".tmp"), filepath.Join(dir, "guest-agent-y")); err != nil {
			t.Fatal(err)
		}
	})
	expect(true, "a plugin directory created", func() {
		if err := os.Mkdir(later, 0o755); err != nil {
			t.Fatal(err)
		}
	})
	expect(true, "a plugin written in the new directory", write(filepath.Join(later, "guest-agent-z")))
	expect(true, "the new directory removed", func() {
		if err := os.RemoveAll(later); err != nil {
			t.Fatal(err)
		}
	})
	for drained := false; !drained; {
		// The removal's other events (the file, the directory's own end).
		if err := w.file.SetReadDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		_, err := w.next(buf)
		drained = err != nil
	}
	expect(true, "the directory created again", func() {
		if err := os.Mkdir(later, 0o755); err != nil {
			t.Fatal(err)
		}
	})
	expect(true, "a plugin in the directory created again", write(filepath.Join(later, "guest-agent-w")))
}

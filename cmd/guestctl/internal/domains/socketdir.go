package domains

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// SocketDir takes a directory of unix sockets as guests: DIR/NAME.sock (or
// DIR/NAME, any socket) is guest NAME's socket whatever the channel, and
// DIR/NAME/TARGET is guest NAME's socket of channel TARGET, for guests with
// several channels.
type SocketDir struct {
	Dir string
}

// Guests lists the sockets of the directory as guests.
func (s SocketDir) Guests(_ context.Context, target string) ([]Guest, error) {
	entries, err := os.ReadDir(s.Dir)
	if err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	var out []Guest
	for _, e := range entries {
		typ := e.Type()
		if typ&os.ModeSymlink != 0 {
			st, err := os.Stat(filepath.Join(s.Dir, e.Name()))
			if err != nil {
				continue // dangling
			}
			typ = st.Mode().Type()
		}
		switch {
		case typ&os.ModeSocket != 0:
			out = append(out, Guest{Name: strings.TrimSuffix(e.Name(), ".sock"), Socket: filepath.Join(s.Dir, e.Name())})
		case typ.IsDir():
			g := Guest{Name: e.Name()}
			if p := filepath.Join(s.Dir, e.Name(), target); isSocket(p) {
				g.Socket = p
			}
			out = append(out, g)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Find returns guest name's socket: DIR/NAME/TARGET, DIR/NAME.sock or DIR/NAME.
func (s SocketDir) Find(_ context.Context, name, target string) (Guest, error) {
	if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
		return Guest{}, ErrNotFound
	}
	base := filepath.Join(s.Dir, name)
	if st, err := os.Stat(base); err == nil && st.IsDir() {
		if p := filepath.Join(base, target); isSocket(p) {
			return Guest{Name: name, Socket: p}, nil
		}
		return Guest{}, ErrNoChannel
	}
	for _, p := range []string{base + ".sock", base} {
		if isSocket(p) {
			return Guest{Name: name, Socket: p}, nil
		}
	}
	if _, err := os.Stat(s.Dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return Guest{}, fmt.Errorf("socket directory: %w", err)
	}
	return Guest{}, ErrNotFound
}

func isSocket(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode()&os.ModeSocket != 0
}

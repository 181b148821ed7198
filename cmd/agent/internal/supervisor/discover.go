package supervisor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/encoding/protojson"
)

// BinaryPrefix names plugin binaries: guest-agent-<plugin name>.
const BinaryPrefix = "guest-agent-"

// Found is one discovered plugin binary.
type Found struct {
	Name string // without the prefix: "cmd-files"
	Path string
	// Shadowed lists binaries of the same name in later directories.
	Shadowed []string
}

// Discover lists plugin binaries in dirs, in order: the first directory that
// has a name wins, as PATH does.
func Discover(dirs []string) ([]Found, error) {
	byName := map[string]*Found{}
	var order []string
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return nil, fmt.Errorf("plugin directory %s: %w", dir, err)
		}
		for _, e := range entries {
			name := e.Name()
			if !strings.HasPrefix(name, BinaryPrefix) || strings.HasSuffix(name, ".sha256") || strings.HasSuffix(name, ManifestSuffix) {
				continue
			}
			path := filepath.Join(dir, name)
			st, err := os.Stat(path)
			if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
				continue
			}
			short := strings.TrimPrefix(name, BinaryPrefix)
			if f, ok := byName[short]; ok {
				if f.Path != path {
					f.Shadowed = append(f.Shadowed, path)
				}
				continue
			}
			byName[short] = &Found{Name: short, Path: path}
			order = append(order, short)
		}
	}
	sort.Strings(order)
	out := make([]Found, 0, len(order))
	for _, n := range order {
		out = append(out, *byName[n])
	}
	return out, nil
}

// infoCache remembers each plugin's Info by binary identity (path, size,
// modification time), so a cold start need not launch plugins that will
// only start on their first command. It serves plugins without a valid
// manifest (see manifest.go).
//
// It is written only in the background (saveInBackground), never under the
// supervisor's lock nor on a request's path: the state directory may be on
// a frozen filesystem, where a write blocks until the thaw.
type infoCache struct {
	path string

	mu      sync.Mutex            // guards Entries and dirty
	Entries map[string]cacheEntry `json:"entries"`
	dirty   bool
	// saving is held by the one goroutine writing the file.
	saving sync.Mutex
}

type cacheEntry struct {
	Key  string          `json:"key"`
	Info json.RawMessage `json:"info"`
}

func loadInfoCache(path string) *infoCache {
	c := &infoCache{path: path, Entries: map[string]cacheEntry{}}
	b, err := os.ReadFile(path)
	if err == nil {
		var file struct {
			Entries map[string]cacheEntry `json:"entries"`
		}
		if json.Unmarshal(b, &file) == nil && file.Entries != nil {
			c.Entries = file.Entries
		}
	}
	return c
}

func binaryKey(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s:%d:%d", path, st.Size(), st.ModTime().UnixNano())
}

func (c *infoCache) get(f Found) *pb.InfoResponse {
	key := binaryKey(f.Path)
	c.mu.Lock()
	e, ok := c.Entries[f.Name]
	c.mu.Unlock()
	if !ok || e.Key != key {
		return nil
	}
	info := &pb.InfoResponse{}
	if err := protojson.Unmarshal(e.Info, info); err != nil {
		return nil
	}
	return info
}

func (c *infoCache) put(f Found, info *pb.InfoResponse) {
	b, err := protojson.Marshal(info)
	if err != nil {
		return
	}
	key := binaryKey(f.Path)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.Entries[f.Name]; ok && e.Key == key && bytes.Equal(e.Info, b) {
		return
	}
	c.Entries[f.Name] = cacheEntry{Key: key, Info: b}
	c.dirty = true
}

// saveInBackground writes the cache, if anything changed, from a goroutine
// of its own. One goroutine writes at a time; a change made meanwhile is
// written by that goroutine after its current write, so a write blocked by
// a frozen filesystem holds up nothing but later writes of the cache.
func (c *infoCache) saveInBackground(logger hclog.Logger) {
	go func() {
		if !c.saving.TryLock() {
			return // the writing goroutine sees dirty and writes again
		}
		for {
			c.mu.Lock()
			if !c.dirty {
				// Released under c.mu: a put after this starts a writer.
				c.saving.Unlock()
				c.mu.Unlock()
				return
			}
			b, err := json.MarshalIndent(struct {
				Entries map[string]cacheEntry `json:"entries"`
			}{c.Entries}, "", "  ")
			c.dirty = false
			c.mu.Unlock()
			if err == nil {
				err = c.write(b)
			}
			if err != nil {
				logger.Warn("plugin info cache not saved", "error", err)
				c.mu.Lock()
				c.saving.Unlock()
				c.mu.Unlock()
				return
			}
		}
	}()
}

func (c *infoCache) write(b []byte) error {
	tmp := c.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("plugin info cache: %w", err)
	}
	return os.Rename(tmp, c.path)
}

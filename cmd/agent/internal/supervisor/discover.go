package supervisor

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"

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
	// file identifies the binary's content on disk: a replaced file (a
	// package upgrade renames a new one over it) has another.
	file fileID
}

// fileID is what tells two files at one path apart without reading them.
type fileID struct {
	dev, ino uint64
	size     int64
	mtime    int64 // nanoseconds
}

// pluginName is what may follow BinaryPrefix: no dot, so that manifests,
// checksums and the temporary files of package managers (dpkg's
// .dpkg-new, rpm's ;hash) are never taken for plugins.
var pluginName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]*$`)

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
			short, ok := strings.CutPrefix(name, BinaryPrefix)
			if !ok || !pluginName.MatchString(short) {
				continue
			}
			path := filepath.Join(dir, name)
			st, err := os.Stat(path)
			if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
				continue
			}
			if f, ok := byName[short]; ok {
				if f.Path != path {
					f.Shadowed = append(f.Shadowed, path)
				}
				continue
			}
			byName[short] = &Found{Name: short, Path: path, file: identifyFile(st)}
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

func identifyFile(st os.FileInfo) fileID {
	id := fileID{size: st.Size(), mtime: st.ModTime().UnixNano()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		id.dev, id.ino = sys.Dev, sys.Ino
	}
	return id
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

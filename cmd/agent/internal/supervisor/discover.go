package supervisor

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
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
			if !strings.HasPrefix(name, BinaryPrefix) || strings.HasSuffix(name, ".sha256") {
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
// only start on their first command.
type infoCache struct {
	path    string
	Entries map[string]cacheEntry `json:"entries"`
}

type cacheEntry struct {
	Key  string          `json:"key"`
	Info json.RawMessage `json:"info"`
}

func loadInfoCache(path string) *infoCache {
	c := &infoCache{path: path, Entries: map[string]cacheEntry{}}
	b, err := os.ReadFile(path)
	if err == nil {
		_ = json.Unmarshal(b, c)
		if c.Entries == nil {
			c.Entries = map[string]cacheEntry{}
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
	e, ok := c.Entries[f.Name]
	if !ok || e.Key != binaryKey(f.Path) {
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
	c.Entries[f.Name] = cacheEntry{Key: binaryKey(f.Path), Info: b}
}

func (c *infoCache) save() error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	tmp := c.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("plugin info cache: %w", err)
	}
	return os.Rename(tmp, c.path)
}

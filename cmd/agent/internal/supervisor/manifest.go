package supervisor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// A manifest is written beside a plugin binary when it is built or installed
// (`guest-agent manifest --write BINARY`, `make build`): what the plugin
// answers to Info, and the identity of the binary that answered. At start-up
// the supervisor believes a manifest whose identity matches its binary, so
// every installed command is listed and routed from the first request
// without starting a plugin. Checking the identity must be cheap in a slow
// guest (TCG): for a Go binary it is the build ID in its ELF note (a hash of
// the build's inputs and output, read in a few small reads) and the file
// size; a binary without a Go build ID falls back to size and SHA-256.

// ManifestSuffix names a plugin's manifest: <binary>.manifest.
const ManifestSuffix = ".manifest"

// manifestFormat is the version of the manifest file format.
const manifestFormat = 1

// manifest is the file written beside a plugin binary.
type manifest struct {
	Format int             `json:"manifest"`
	Plugin string          `json:"plugin"`
	Binary binaryIdentity  `json:"binary"`
	Info   json.RawMessage `json:"info"` // pb.InfoResponse in protojson
}

// binaryIdentity is what a manifest records of its binary.
type binaryIdentity struct {
	// GoBuildID is the Go build ID from the ELF note .note.go.buildid
	// (`go tool buildid`), "" when the binary has none.
	GoBuildID string `json:"go_build_id,omitempty"`
	Size      int64  `json:"size"`
	// SHA256 of the whole file: checked at start-up only for a binary
	// without a Go build ID, and compared with a configured checksum pin.
	SHA256 string `json:"sha256"`
}

// ManifestPath is where the manifest of the plugin binary at path lives.
func ManifestPath(binary string) string { return binary + ManifestSuffix }

// errNoManifest: the plugin has no manifest (not an error worth a warning).
var errNoManifest = errors.New("no manifest")

// loadManifest returns the Info recorded in the manifest beside binary if
// that manifest describes this very binary. pin is the configured SHA-256 of
// the binary ("" when not pinned): a pinned plugin's manifest must record
// that checksum (the launch then checks the file itself, as always).
func loadManifest(binary, pin string) (*pb.InfoResponse, error) {
	b, err := os.ReadFile(ManifestPath(binary))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoManifest
	}
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", ManifestPath(binary), err)
	}
	if m.Format != manifestFormat {
		return nil, fmt.Errorf("%s: manifest format %d, this agent reads %d", ManifestPath(binary), m.Format, manifestFormat)
	}
	if pin != "" && !strings.EqualFold(m.Binary.SHA256, pin) {
		return nil, fmt.Errorf("the manifest records SHA-256 %s, the configuration pins %s", m.Binary.SHA256, pin)
	}
	if err := m.Binary.matches(binary); err != nil {
		return nil, err
	}
	info := &pb.InfoResponse{}
	if err := protojson.Unmarshal(m.Info, info); err != nil {
		return nil, fmt.Errorf("%s: info: %w", ManifestPath(binary), err)
	}
	if info.Kind == pb.Kind_KIND_UNSPECIFIED {
		return nil, fmt.Errorf("%s: info has no plugin kind", ManifestPath(binary))
	}
	return info, nil
}

// matches tells whether the file at path is the binary id describes: same
// size and Go build ID, or same size and SHA-256 when id has no build ID.
func (id binaryIdentity) matches(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Size() != id.Size {
		return fmt.Errorf("binary is %d bytes, its manifest describes one of %d bytes", st.Size(), id.Size)
	}
	if id.GoBuildID != "" {
		got, err := goBuildID(path)
		if err != nil {
			return fmt.Errorf("binary's Go build ID: %w", err)
		}
		if got != id.GoBuildID {
			return fmt.Errorf("binary's Go build ID is %s, its manifest's %s", got, id.GoBuildID)
		}
		return nil
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return err
	}
	if !strings.EqualFold(sum, id.SHA256) {
		return fmt.Errorf("binary's SHA-256 is %s, its manifest's %s", sum, id.SHA256)
	}
	return nil
}

// identify records the identity of the binary at path (hashing it whole:
// done when a manifest is written, never at start-up for a Go binary).
func identify(path string) (binaryIdentity, error) {
	st, err := os.Stat(path)
	if err != nil {
		return binaryIdentity{}, err
	}
	sum, err := fileSHA256(path)
	if err != nil {
		return binaryIdentity{}, err
	}
	id := binaryIdentity{Size: st.Size(), SHA256: sum}
	id.GoBuildID, _ = goBuildID(path) // none: identified by SHA-256
	return id, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// goBuildID reads the Go build ID from an ELF binary's note (name "Go",
// type 4, in section .note.go.buildid or a PT_NOTE segment), as `go tool
// buildid` prints it. Only the headers and the note are read.
func goBuildID(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	const maxNote = 64 << 10
	if sec := f.Section(".note.go.buildid"); sec != nil && sec.Size <= maxNote {
		if data, err := sec.Data(); err == nil {
			if id, ok := findGoNote(data, f.ByteOrder); ok {
				return id, nil
			}
		}
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE || p.Filesz > maxNote {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			continue
		}
		if id, ok := findGoNote(data, f.ByteOrder); ok {
			return id, nil
		}
	}
	return "", errors.New("no Go build ID note")
}

// findGoNote walks ELF notes (namesz, descsz, type, name, desc; 4-byte
// aligned) for Go's build ID note.
func findGoNote(data []byte, order interface{ Uint32([]byte) uint32 }) (string, bool) {
	const goBuildIDTag = 4
	align := func(n uint64) uint64 { return (n + 3) &^ 3 }
	for len(data) >= 12 {
		namesz, descsz, typ := uint64(order.Uint32(data)), uint64(order.Uint32(data[4:])), order.Uint32(data[8:])
		rest := data[12:]
		if align(namesz)+align(descsz) > uint64(len(rest)) {
			return "", false
		}
		name := rest[:namesz]
		desc := rest[align(namesz) : align(namesz)+descsz]
		if typ == goBuildIDTag && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Go")) {
			return string(desc), true
		}
		data = rest[align(namesz)+align(descsz):]
	}
	return "", false
}

// MakeManifest starts the plugin at binary once through the supervisor's
// launch path, asks its Info, stops it, and returns the manifest to write
// at ManifestPath(binary).
func MakeManifest(ctx context.Context, binary string, logger hclog.Logger) ([]byte, *pb.InfoResponse, error) {
	binary, err := filepath.Abs(binary)
	if err != nil {
		return nil, nil, err
	}
	id, err := identify(binary)
	if err != nil {
		return nil, nil, err
	}
	sockDir, err := os.MkdirTemp("", "ga-manifest")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(sockDir)
	name := strings.TrimPrefix(filepath.Base(binary), BinaryPrefix)
	r, err := newLauncher().launch(launchSpec{
		path: binary, name: name, sockDir: sockDir, logLevel: levelName(logger), logger: logger,
	})
	if err != nil {
		return nil, nil, err
	}
	info, err := r.info(ctx)
	r.stop()
	if err != nil {
		return nil, nil, fmt.Errorf("plugin %s: info: %w", name, err)
	}
	// The binary may not change while it is asked.
	if after, err := identify(binary); err != nil || after != id {
		return nil, nil, fmt.Errorf("%s changed while its manifest was made", binary)
	}
	b, err := encodeManifest(name, id, info)
	if err != nil {
		return nil, nil, err
	}
	return b, info, nil
}

func encodeManifest(name string, id binaryIdentity, info *pb.InfoResponse) ([]byte, error) {
	infoJSON, err := protojson.Marshal(info)
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(manifest{Format: manifestFormat, Plugin: name, Binary: id, Info: infoJSON}, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// CheckManifest tells whether the manifest beside binary describes it, and
// returns what it records.
func CheckManifest(binary string) (*pb.InfoResponse, error) {
	info, err := loadManifest(binary, "")
	if errors.Is(err, errNoManifest) {
		return nil, fmt.Errorf("%s: %w", ManifestPath(binary), os.ErrNotExist)
	}
	return info, err
}

// checkBelievedInfo compares what a plugin started for the first time says
// it serves with what its manifest or the info cache said (m.believed).
// If they differ the real Info wins: a warning, routes rebuilt, parsers told.
// It runs in ensureRunning with m.mu held (lock order: m.mu, then s.mu).
func (s *Supervisor) checkBelievedInfo(ctx context.Context, m *managed, r *running) {
	source := m.believed
	m.believed = ""
	info, err := r.info(ctx)
	if err != nil {
		s.logger.Warn("plugin Info not checked against its "+source, "plugin", m.found.Name, "error", err)
		return
	}
	if proto.Equal(info, m.info) {
		return
	}
	hint := "rewrite it with: guest-agent manifest --write " + m.found.Path
	if source == "cache" {
		hint = "cache entry replaced"
	}
	s.logger.Warn("plugin's Info differs from its "+source+": routes rebuilt from what it serves",
		"plugin", m.found.Name, "hint", hint)
	s.mu.Lock()
	m.info = info
	s.buildRegistry()
	s.mu.Unlock()
	if source == "cache" {
		s.cache.put(m.found, info)
		s.cache.saveInBackground(s.logger)
	}
	// Not the caller's context: it may be one request's.
	pushCtx := s.ctx
	if pushCtx == nil {
		pushCtx = context.Background()
	}
	go s.pushRoutes(pushCtx)
}

// pushRoutes gives every running parser the current routes. Pushes are
// serialised so an older set of routes never overtakes a newer one.
func (s *Supervisor) pushRoutes(ctx context.Context) {
	s.routesPush.Lock()
	defer s.routesPush.Unlock()
	for _, p := range s.uniq(s.parserOf) {
		p.mu.Lock()
		r := p.run
		p.mu.Unlock()
		if r == nil {
			continue // a restarting parser gets the routes when configured
		}
		if _, err := r.clients.Parser.Configure(ctx, s.parserRequest(p, 0)); err != nil {
			s.logger.Error("new routes not given to the parser", "plugin", p.found.Name, "error", err)
		}
	}
}

// kindOf reads a plugin's kind; m.info may be replaced once the plugin
// runs (checkBelievedInfo). Not to be called with m.mu held.
func (s *Supervisor) kindOf(m *managed) pb.Kind {
	s.mu.Lock()
	defer s.mu.Unlock()
	return m.info.Kind
}

package main

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (n *nova) updateCommands() []sdk.Command {
	return []sdk.Command{{
		Name: cmdAgentupdate,
		Description: "nova: replace the agent binary; value is \"URL,MD5\", \"URL,sha256:HEX\" or {\"url\", \"md5sum\"} " +
			"(http, https or file URL; verified before anything is replaced)",
		ArgsSchema: `{"type":"object","required":["value"],"properties":{"value":{"type":["string","object"]}}}`,
		Handler:    n.agentupdate,
	}}
}

// checksum is the digest an update must match.
type checksum struct {
	algo string // "md5" or "sha256"
	want []byte
}

func (c checksum) newHash() hash.Hash {
	if c.algo == "sha256" {
		return sha256.New()
	}
	return md5.New()
}

// parseUpdateValue reads the URL and checksum from either form nova sends.
func parseUpdateValue(raw json.RawMessage) (string, checksum, error) {
	var (
		rawURL, sum string
		s           string
	)
	if err := json.Unmarshal(raw, &s); err == nil {
		u, c, ok := strings.Cut(s, ",")
		if !ok {
			return "", checksum{}, sdk.Errorf("agentupdate: value must be \"URL,MD5\" or \"URL,sha256:HEX\": no checksum")
		}
		rawURL, sum = u, c
	} else {
		var o struct {
			URL    string `json:"url"`
			MD5Sum string `json:"md5sum"`
		}
		if err := json.Unmarshal(raw, &o); err != nil {
			return "", checksum{}, sdk.Errorf("agentupdate: value must be \"URL,MD5\" or {\"url\", \"md5sum\"}")
		}
		rawURL, sum = o.URL, o.MD5Sum
	}
	rawURL, sum = strings.TrimSpace(rawURL), strings.ToLower(strings.TrimSpace(sum))
	if sum == "" {
		return "", checksum{}, sdk.Errorf("agentupdate: refused: no checksum given")
	}
	c := checksum{algo: "md5"}
	if rest, ok := strings.CutPrefix(sum, "sha256:"); ok {
		c.algo, sum = "sha256", rest
	} else if rest, ok := strings.CutPrefix(sum, "md5:"); ok {
		sum = rest
	}
	want, err := hex.DecodeString(sum)
	if err != nil || len(want) != c.newHash().Size() {
		return "", checksum{}, sdk.Errorf("agentupdate: %s is not a %s checksum", quote(sum), c.algo)
	}
	c.want = want
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") {
		return "", checksum{}, sdk.Errorf("agentupdate: %s is not an http, https or file URL", quote(rawURL))
	}
	return rawURL, c, nil
}

// agentupdate downloads the new binary next to the current one, checks it
// and only then renames it into place (keeping the previous one as
// <binary>.old), so a bad download never replaces anything.
func (n *nova) agentupdate(ctx context.Context, call *sdk.Call) (any, error) {
	var a valueArg
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	rawURL, sum, err := parseUpdateValue(a.Value)
	if err != nil {
		return nil, err
	}
	if n.opts.AgentBinary == "" {
		return nil, sdk.Errorf("agentupdate: not configured on this guest (plugin option agent_binary is not set)")
	}
	target := n.opts.under(n.opts.AgentBinary)
	mode := os.FileMode(0o755)
	meta := &fileMeta{mode: mode}
	if fi, err := os.Stat(target); err == nil {
		meta.mode = fi.Mode().Perm() | 0o100
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			meta.uid, meta.gid = int(st.Uid), int(st.Gid)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("agentupdate: %w", err)
	}

	body, err := n.open(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	defer body.Close()
	dir := filepath.Dir(target)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(target)+".update-*")
	if err != nil {
		return nil, fmt.Errorf("agentupdate: %w", err)
	}
	keep := false
	defer func() {
		if !keep {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sum.newHash()
	limit := n.opts.MaxDownloadBytes
	written, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("agentupdate: download %s: %w", rawURL, err)
	}
	if written > limit {
		return nil, sdk.Errorf("agentupdate: download larger than %d bytes", limit)
	}
	if got := h.Sum(nil); subtle.ConstantTimeCompare(got, sum.want) != 1 {
		return nil, sdk.Errorf("agentupdate: %s checksum mismatch: got %x, want %x; nothing replaced", sum.algo, got, sum.want)
	}
	if err := tmp.Chmod(meta.mode); err != nil {
		return nil, fmt.Errorf("agentupdate: %w", err)
	}
	if err := tmp.Chown(meta.uid, meta.gid); err != nil && os.Geteuid() == 0 {
		return nil, fmt.Errorf("agentupdate: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return nil, fmt.Errorf("agentupdate: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("agentupdate: %w", err)
	}
	if _, err := os.Stat(target); err == nil {
		old := target + ".old"
		_ = os.Remove(old)
		if err := os.Link(target, old); err != nil {
			n.log.Warn("agentupdate: previous binary not kept", "error", err)
		}
	}
	if err := os.Rename(tmp.Name(), target); err != nil {
		return nil, fmt.Errorf("agentupdate: %w", err)
	}
	keep = true
	syncDir(dir)
	n.log.Info("agentupdate: binary replaced", "path", n.opts.AgentBinary, "bytes", written, sum.algo, hex.EncodeToString(sum.want))
	if len(n.opts.AgentRestartCommand) > 0 {
		if out, err := runCommand(ctx, n.opts.AgentRestartCommand); err != nil {
			return nil, sdk.Errorf("agentupdate: binary replaced, but %s failed: %v: %s", n.opts.AgentRestartCommand[0], err, strings.TrimSpace(string(out)))
		}
	}
	return "", nil
}

// open starts the download of an http, https or file URL.
func (n *nova) open(ctx context.Context, rawURL string) (io.ReadCloser, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, sdk.Errorf("agentupdate: %v", err)
	}
	if u.Scheme == "file" {
		f, err := os.Open(u.Path)
		if err != nil {
			return nil, sdk.Errorf("agentupdate: %v", err)
		}
		return f, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return nil, sdk.Errorf("agentupdate: %v", err)
	}
	resp, err := n.httpClient.Do(req)
	if err != nil {
		return nil, sdk.Errorf("agentupdate: download: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, sdk.Errorf("agentupdate: download %s: %s", rawURL, resp.Status)
	}
	return resp.Body, nil
}

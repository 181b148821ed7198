package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/guest-agent/guest-agent/shared/sdk"
)

func (n *nova) injectCommands() []sdk.Command {
	return []sdk.Command{{
		Name:        cmdInjectfile,
		Description: "nova: write a file; value is base64 of \"<path>,<contents>\" (an existing file is kept as <path>.bak.<unix time>)",
		ArgsSchema:  `{"type":"object","required":["value"],"properties":{"value":{"type":"string","contentEncoding":"base64"}}}`,
		Handler:     n.injectfile,
	}, {
		Name:        cmdFileInject,
		Description: "nova: write a file; value is {\"b64_path\": ..., \"b64_file\": ...}",
		ArgsSchema: `{"type":"object","required":["value"],"properties":{"value":{"type":"object","required":["b64_path","b64_file"],` +
			`"properties":{"b64_path":{"type":"string"},"b64_file":{"type":"string"}}}}}`,
		Handler: n.fileInject,
	}}
}

// decodeB64 accepts the standard alphabet with or without padding and with
// line breaks, as Python's base64.b64decode on the host produced it.
func decodeB64(s string) ([]byte, error) {
	s = strings.Join(strings.Fields(s), "")
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawStdEncoding.DecodeString(strings.TrimRight(s, "="))
}

func (n *nova) injectfile(_ context.Context, call *sdk.Call) (any, error) {
	v, err := stringValue(call)
	if err != nil {
		return nil, err
	}
	raw, err := decodeB64(v)
	if err != nil {
		return nil, sdk.Errorf("injectfile: error doing base64 decoding of data: %v", err)
	}
	path, contents, ok := strings.Cut(string(raw), ",")
	if !ok {
		return nil, sdk.Errorf("injectfile: value is not \"<path>,<contents>\"")
	}
	return n.inject(path, []byte(contents))
}

// fileInject serves the newer form nova's dom0 plugin sends when "file_inject"
// is among the features.
func (n *nova) fileInject(_ context.Context, call *sdk.Call) (any, error) {
	var a valueArg
	if err := call.Decode(&a); err != nil {
		return nil, err
	}
	var v struct {
		Path *string `json:"b64_path"`
		File *string `json:"b64_file"`
	}
	if err := json.Unmarshal(a.Value, &v); err != nil || v.Path == nil || v.File == nil {
		return nil, sdk.Errorf("file_inject: value must be {\"b64_path\": ..., \"b64_file\": ...}")
	}
	path, err := decodeB64(*v.Path)
	if err != nil {
		return nil, sdk.Errorf("file_inject: b64_path: %v", err)
	}
	contents, err := decodeB64(*v.File)
	if err != nil {
		return nil, sdk.Errorf("file_inject: b64_file: %v", err)
	}
	return n.inject(string(path), contents)
}

// inject writes contents to path under root: atomically, keeping an
// existing file's mode and owner and the file itself as
// <path>.bak.<unix time>.
func (n *nova) inject(path string, contents []byte) (any, error) {
	if !strings.HasPrefix(path, "/") || strings.IndexByte(path, 0) >= 0 {
		return nil, sdk.Errorf("injectfile: path %s is not absolute", quote(path))
	}
	target := n.opts.under(path)
	if fi, err := os.Lstat(target); err == nil {
		if !fi.Mode().IsRegular() {
			return nil, sdk.Errorf("injectfile: %s exists and is not a regular file", path)
		}
		bak, err := n.backup(target)
		if err != nil {
			return nil, err
		}
		n.log.Info("injectfile: previous file kept", "path", path, "backup", bak)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("injectfile: %w", err)
	}
	if err := replaceFile(target, contents, nil); err != nil {
		return nil, fmt.Errorf("injectfile: %w", err)
	}
	n.log.Info("injectfile: file written", "path", path, "bytes", len(contents))
	return "", nil
}

// backup hard-links path to <path>.bak.<unix time> (a further .N when that
// exists), so the file stays in place until the new one replaces it.
func (n *nova) backup(path string) (string, error) {
	base := path + ".bak." + strconv.FormatInt(n.now().Unix(), 10)
	for i := 0; i < 100; i++ {
		bak := base
		if i > 0 {
			bak += "." + strconv.Itoa(i)
		}
		err := os.Link(path, bak)
		if err == nil {
			return bak, nil
		}
		if errors.Is(err, os.ErrExist) {
			continue
		}
		// No hard links here (some file systems): copy instead.
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EMLINK) {
			if err := copyFile(path, bak); err != nil {
				return "", fmt.Errorf("injectfile: backup: %w", err)
			}
			return bak, nil
		}
		return "", fmt.Errorf("injectfile: backup: %w", err)
	}
	return "", fmt.Errorf("injectfile: backup: too many backups named %s*", filepath.Base(base))
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	meta := &fileMeta{mode: fi.Mode().Perm()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		meta.uid, meta.gid = int(st.Uid), int(st.Gid)
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("%s exists", dst)
	}
	return replaceFile(dst, data, meta)
}

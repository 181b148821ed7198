package domains

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
)

// DefaultRuntimeDir is where libvirtd's QEMU driver (qemu:///system) keeps
// the status XML of each running domain.
const DefaultRuntimeDir = "/run/libvirt/qemu"

// RuntimeDir reads libvirt's status files of running domains, NAME.xml
// (<domstatus><domain>...), in Dir. The QEMU driver writes one when a
// domain starts and removes it when it stops.
type RuntimeDir struct {
	Dir string // empty: DefaultRuntimeDir
}

func (r RuntimeDir) dir() string {
	if r.Dir == "" {
		return DefaultRuntimeDir
	}
	return r.Dir
}

// Guests lists the domains with a status file, with the socket of channel
// target.
func (r RuntimeDir) Guests(ctx context.Context, target string) ([]Guest, error) {
	files, err := filepath.Glob(filepath.Join(globEscape(r.dir()), "*.xml"))
	if err != nil {
		return nil, fmt.Errorf("libvirt runtime directory %s: %w", r.dir(), err)
	}
	if _, err := os.Stat(r.dir()); err != nil {
		return nil, fmt.Errorf("libvirt runtime directory: %w", err)
	}
	// Status files of busy domains run to tens of KiB: parse them side by side.
	guests := make([]Guest, len(files))
	keep := make([]bool, len(files))
	errs := make([]error, len(files))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, f := range files {
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			d, err := readDomain(f)
			switch {
			case errors.Is(err, os.ErrNotExist): // stopped meanwhile
			case err != nil:
				errs[i] = err
			case d.Running:
				guests[i], keep[i] = d.guest(target), true
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []Guest
	for i := range files {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if keep[i] {
			out = append(out, guests[i])
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Find reads the status file of domain name.
func (r RuntimeDir) Find(_ context.Context, name, target string) (Guest, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return Guest{}, ErrNotFound
	}
	d, err := readDomain(filepath.Join(r.dir(), name+".xml"))
	if errors.Is(err, os.ErrNotExist) {
		return Guest{}, ErrNotFound
	}
	if err != nil {
		return Guest{}, err
	}
	return findIn(d, target)
}

func readDomain(path string) (Domain, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Domain{}, err
	}
	d, err := ParseDomainXML(data)
	if err != nil {
		return Domain{}, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// globEscape quotes the pattern characters of a literal path.
func globEscape(p string) string {
	var b strings.Builder
	for _, r := range p {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

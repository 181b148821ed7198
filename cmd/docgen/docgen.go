// Package docgen is what the hidden docs commands of guest-agent and
// guestctl share (built with -tags docs only): the date of the man pages and
// the shell completions.
package docgen

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

// ManDate is SOURCE_DATE_EPOCH's date when set (reproducible builds), else
// today.
func ManDate() (time.Time, error) {
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	return time.Now().UTC(), nil
}

// WriteCompletions writes cobra's completion scripts of root under
// dir/completion/{bash,zsh,fish}, named as the shells look them up.
func WriteCompletions(root *cobra.Command, dir string) error {
	name := root.Name()
	for _, c := range []struct {
		shell, file string
		gen         func(*os.File) error
	}{
		{"bash", name, func(f *os.File) error { return root.GenBashCompletionV2(f, true) }},
		{"zsh", "_" + name, func(f *os.File) error { return root.GenZshCompletion(f) }},
		{"fish", name + ".fish", func(f *os.File) error { return root.GenFishCompletion(f, true) }},
	} {
		if err := os.MkdirAll(filepath.Join(dir, "completion", c.shell), 0o755); err != nil {
			return err
		}
		f, err := os.Create(filepath.Join(dir, "completion", c.shell, c.file))
		if err != nil {
			return err
		}
		err = c.gen(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%s completion: %w", c.shell, err)
		}
	}
	return nil
}

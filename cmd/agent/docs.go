//go:build docs

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// The hidden docs command exists only in a build with -tags docs (make doc):
// it writes what the packages install, and keeps cobra's doc generator and
// its markdown renderer out of the agent.
func init() { extraCommands = append(extraCommands, newDocsCmd) }

func newDocsCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "docs --dir DIR",
		Short:  "Write guest-agent(8), agent.hcl(5) and the bash, zsh and fish completions under DIR",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := cmd.Root()
			date, err := manDate()
			if err != nil {
				return err
			}
			man8 := filepath.Join(dir, "man", "man8")
			if err := os.MkdirAll(man8, 0o755); err != nil {
				return err
			}
			root.DisableAutoGenTag = true
			if err := doc.GenManTree(root, &doc.GenManHeader{
				Section: "8", Source: "guest-agent " + version, Manual: "System Administration", Date: &date,
			}, man8); err != nil {
				return err
			}
			man5 := filepath.Join(dir, "man", "man5")
			if err := os.MkdirAll(man5, 0o755); err != nil {
				return err
			}
			page := md2man.Render(config.ManPage(version, date.Format("Jan 2006")))
			if err := os.WriteFile(filepath.Join(man5, "agent.hcl.5"), page, 0o644); err != nil {
				return err
			}
			return writeCompletions(root, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "output directory (man/, completion/)")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

// manDate is SOURCE_DATE_EPOCH's date when set (reproducible builds), else
// today.
func manDate() (time.Time, error) {
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		sec, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH: %w", err)
		}
		return time.Unix(sec, 0).UTC(), nil
	}
	return time.Now().UTC(), nil
}

// writeCompletions writes cobra's completion scripts of root under
// dir/completion/{bash,zsh,fish}, named as the shells look them up.
func writeCompletions(root *cobra.Command, dir string) error {
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

//go:build docs

package main

import (
	"os"
	"path/filepath"

	"github.com/guest-agent/guest-agent/cmd/docgen"
	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// The hidden docs command exists only in a build with -tags docs (make doc):
// it writes what the packages install, and keeps cobra's doc generator and
// its markdown renderer out of guestctl.
func init() { extraCommands = append(extraCommands, newDocsCmd) }

func newDocsCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:    "docs --dir DIR",
		Short:  "Write guestctl(1) and the bash, zsh and fish completions under DIR",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := cmd.Root()
			date, err := docgen.ManDate()
			if err != nil {
				return err
			}
			man1 := filepath.Join(dir, "man", "man1")
			if err := os.MkdirAll(man1, 0o755); err != nil {
				return err
			}
			root.DisableAutoGenTag = true
			if err := doc.GenManTree(root, &doc.GenManHeader{
				Section: "1", Source: "guest-agent " + version, Manual: "User Commands", Date: &date,
			}, man1); err != nil {
				return err
			}
			return docgen.WriteCompletions(root, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "output directory (man/, completion/)")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

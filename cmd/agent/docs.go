//go:build docs

package main

import (
	"os"
	"path/filepath"

	"github.com/cpuguy83/go-md2man/v2/md2man"
	"github.com/guest-agent/guest-agent/cmd/agent/internal/config"
	"github.com/guest-agent/guest-agent/cmd/docgen"
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
			date, err := docgen.ManDate()
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
			return docgen.WriteCompletions(root, dir)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "output directory (man/, completion/)")
	_ = cmd.MarkFlagRequired("dir")
	return cmd
}

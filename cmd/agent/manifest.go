package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/guest-agent/guest-agent/cmd/agent/internal/supervisor"
	"github.com/hashicorp/go-hclog"
	"github.com/spf13/cobra"
)

// newManifestCmd is `guest-agent manifest`: what packagers run after
// building or installing a plugin, so the agent knows its commands at boot
// without starting it.
func newManifestCmd() *cobra.Command {
	var write, check bool
	cmd := &cobra.Command{
		Use:   "manifest [--write | --check] BINARY...",
		Short: "Make (or check) the manifest of plugin binaries: what each serves, for the agent to know at boot",
		Long: `Starts each plugin binary once, asks what it serves (Info) and prints its
manifest, or with --write writes it beside the binary as BINARY.manifest.
The manifest records the binary's Go build ID and size (SHA-256 when it has no
build ID): at start-up the agent believes a manifest only for the very binary
it describes, and learns any other plugin by starting it. Run it after every
build or install of a plugin, last (stripping or otherwise rewriting the binary
afterwards makes its manifest stale). --check tells whether the manifest
beside each binary describes it.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if write && check {
				return fmt.Errorf("--write and --check exclude each other")
			}
			logger := stderrLogger(hclog.Warn)
			failed := 0
			for _, bin := range args {
				if check {
					info, err := supervisor.CheckManifest(bin)
					if err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: stale or missing manifest: %v\n", bin, err)
						failed++
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s: manifest ok (%s %s, %d commands)\n", bin, info.Name, info.Version, len(info.Commands))
					continue
				}
				b, info, err := supervisor.MakeManifest(cmd.Context(), bin, logger)
				if err != nil {
					return fmt.Errorf("%s: %w", bin, err)
				}
				if !write {
					if _, err := cmd.OutOrStdout().Write(b); err != nil {
						return err
					}
					continue
				}
				path := supervisor.ManifestPath(bin)
				if err := writeFileAtomic(path, b, 0o644); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: %s %s, %d commands\n", path, info.Name, info.Version, len(info.Commands))
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d manifests stale or missing", failed, len(args))
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&write, "write", "w", false, "write BINARY.manifest beside each binary instead of printing it")
	cmd.Flags().BoolVar(&check, "check", false, "check that the manifest beside each binary describes it (exit status 1 if not)")
	return cmd
}

// writeFileAtomic writes path through a temporary file in its directory.
func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".manifest-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

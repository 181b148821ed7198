package main

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
)

// maxCommandOutput bounds what is kept of a helper's output for errors.
const maxCommandOutput = 4096

// runCommand runs argv (never through a shell) and returns its combined
// output, truncated.
func runCommand(ctx context.Context, argv []string) ([]byte, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, fmt.Errorf("empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Stdin = nil
	err := cmd.Run()
	b := out.Bytes()
	if len(b) > maxCommandOutput {
		b = b[:maxCommandOutput]
	}
	if err != nil {
		return b, fmt.Errorf("run %s: %w", argv[0], err)
	}
	return b, nil
}

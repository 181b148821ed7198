package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	pb "github.com/guest-agent/guest-agent/shared/gen/guestagentv1"
	"github.com/hashicorp/go-hclog"
)

// The handler's share of the transfer benchmark (64 MiB file, 64 KiB and
// 1 MiB chunks), through CommandPlugin.Run as the data plane calls it.
func BenchmarkFileRead(b *testing.B) {
	for _, chunk := range []int{64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", chunk>>10), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "f")
			if err := os.WriteFile(path, make([]byte, 64<<20), 0o644); err != nil {
				b.Fatal(err)
			}
			f := newFilesPlugin()
			f.p.Logger = hclog.NewNullLogger()
			defer f.closeAll()
			resp := f.p.Run(context.Background(), &pb.RunRequest{Command: "guest-file-open", ArgsJson: fmt.Appendf(nil, `{"path":%q}`, path)})
			h := string(resp.ResultJson)
			args := fmt.Appendf(nil, `{"handle":%s,"count":%d}`, h, chunk)
			rewind := fmt.Appendf(nil, `{"handle":%s,"offset":0,"whence":0}`, h)
			b.SetBytes(int64(chunk))
			b.ResetTimer()
			for b.Loop() {
				r := f.p.Run(context.Background(), &pb.RunRequest{Command: "guest-file-read", ArgsJson: args})
				if r.Error != nil {
					b.Fatal(r.Error.Desc)
				}
				if len(r.Blob) < chunk {
					f.p.Run(context.Background(), &pb.RunRequest{Command: "guest-file-seek", ArgsJson: rewind})
				}
			}
		})
	}
}

func BenchmarkFileWrite(b *testing.B) {
	for _, chunk := range []int{64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKiB", chunk>>10), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "f")
			f := newFilesPlugin()
			f.p.Logger = hclog.NewNullLogger()
			defer f.closeAll()
			resp := f.p.Run(context.Background(), &pb.RunRequest{Command: "guest-file-open", ArgsJson: fmt.Appendf(nil, `{"path":%q,"mode":"w"}`, path)})
			h := string(resp.ResultJson)
			args := fmt.Appendf(nil, `{"handle":%s,"buf-b64":""}`, h)
			rewind := fmt.Appendf(nil, `{"handle":%s,"offset":0,"whence":0}`, h)
			data := make([]byte, chunk)
			b.SetBytes(int64(chunk))
			written := 0
			for b.Loop() {
				r := f.p.Run(context.Background(), &pb.RunRequest{Command: "guest-file-write", ArgsJson: args, Blob: data})
				if r.Error != nil {
					b.Fatal(r.Error.Desc)
				}
				if written += chunk; written >= 64<<20 {
					f.p.Run(context.Background(), &pb.RunRequest{Command: "guest-file-seek", ArgsJson: rewind})
					written = 0
				}
			}
		})
	}
}

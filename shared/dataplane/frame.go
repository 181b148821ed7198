// Package dataplane carries command requests from parsers to command plugins
// and their responses back, over one unix stream socket per plugin.
//
// The control plane (Info, Configure, Health) is gRPC through go-plugin. The
// request path is not: a gRPC round trip costs about 124 µs here and a 1 MiB
// message about 2 ms, against qemu-ga's whole 60 µs ping. A frame is a small
// protobuf header (RunRequest or RunResponse without its blob) followed by the
// raw blob, written with one writev so bulk data is never copied in user space
// on the way out, and read straight into its final buffer on the way in.
package dataplane

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"

	"google.golang.org/protobuf/proto"
)

// MaxBlob bounds the binary part of one frame: qemu-ga reads at most 48 MiB per
// guest-file-read and accepts requests up to 64 MiB.
const MaxBlob = 64 << 20

// maxMeta bounds the protobuf part of one frame (arguments and results).
const maxMeta = 80 << 20

const headerLen = 8

// writeFrame writes meta (marshalled without blob) and the blob, given in
// parts that are sent back to back, as one frame.
func writeFrame(w io.Writer, meta proto.Message, blobs [][]byte, scratch []byte) ([]byte, error) {
	size := 0
	for _, b := range blobs {
		size += len(b)
	}
	if size > MaxBlob {
		return scratch, fmt.Errorf("dataplane: blob of %d bytes exceeds the %d byte limit", size, MaxBlob)
	}
	buf := append(scratch[:0], make([]byte, headerLen)...)
	buf, err := proto.MarshalOptions{}.MarshalAppend(buf, meta)
	if err != nil {
		return buf, fmt.Errorf("dataplane: marshal frame: %w", err)
	}
	binary.BigEndian.PutUint32(buf[0:4], uint32(len(buf)-headerLen))
	binary.BigEndian.PutUint32(buf[4:8], uint32(size))
	if size == 0 {
		_, err = w.Write(buf)
	} else {
		bufs := append(net.Buffers{buf}, blobs...)
		_, err = bufs.WriteTo(w)
	}
	if err != nil {
		return buf, fmt.Errorf("dataplane: write frame: %w", err)
	}
	return buf, nil
}

// readFrame reads one frame into meta and returns its blob.
func readFrame(r io.Reader, meta proto.Message, scratch []byte, pool *BufferPool) ([]byte, []byte, error) {
	var hdr [headerLen]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return scratch, nil, err
	}
	metaLen := binary.BigEndian.Uint32(hdr[0:4])
	blobLen := binary.BigEndian.Uint32(hdr[4:8])
	if metaLen > maxMeta || blobLen > MaxBlob {
		return scratch, nil, fmt.Errorf("dataplane: frame of %d+%d bytes exceeds the limits", metaLen, blobLen)
	}
	if cap(scratch) < int(metaLen) {
		scratch = make([]byte, metaLen)
	}
	scratch = scratch[:metaLen]
	if _, err := io.ReadFull(r, scratch); err != nil {
		return scratch, nil, fmt.Errorf("dataplane: read frame: %w", err)
	}
	if err := proto.Unmarshal(scratch, meta); err != nil {
		return scratch, nil, fmt.Errorf("dataplane: unmarshal frame: %w", err)
	}
	var blob []byte
	if blobLen > 0 {
		blob = pool.Get(int(blobLen))
		if _, err := io.ReadFull(r, blob); err != nil {
			pool.Put(blob)
			return scratch, nil, fmt.Errorf("dataplane: read blob: %w", err)
		}
	}
	return scratch, blob, nil
}

package dialect

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"slices"
	"strconv"

	"github.com/guest-agent/guest-agent/shared/internal/wire"
)

// Bulk data (a file read's bytes) comes back from a plugin raw, beside the
// result, never in it: Outcome.Blob, with BlobField naming the result
// member it belongs in as base64 (qga's "buf-b64"), or BlobText when
// read-ahead encoded it already. These helpers put it where it belongs, in
// any dialect's reply.

// HasBlob tells whether the outcome carries bulk data for its result.
func (o *Outcome) HasBlob() bool {
	return o.Err == nil && !o.NoResponse && (o.Blob != nil || o.BlobText != nil) && o.BlobField != ""
}

// ResultJSON is the command's return value without its bulk data, "{}"
// when it has none.
func (o *Outcome) ResultJSON() json.RawMessage {
	if len(o.Result) == 0 {
		return json.RawMessage("{}")
	}
	return o.Result
}

// BlobSplice splits the result object around its bulk data: the result as
// it belongs in the reply is prefix, then the data's base64 text
// (AppendBlobText, or BlobText as it is), then suffix, with the data as the
// object's first member, BlobField. A dialect writes prefix, text and
// suffix inside its own envelope with one StreamSession.WriteReply, and the
// megabytes of text are never copied. ok is false when the outcome has no
// bulk data (HasBlob) or its result is not an object.
func (o *Outcome) BlobSplice() (prefix, suffix []byte, ok bool) {
	return o.AppendBlobSplice(nil, nil)
}

// AppendBlobSplice is BlobSplice appending prefix to head and suffix to
// tail (a dialect's envelope before and after the result), so a reply's
// parts cost no more allocations than the dialect's own.
func (o *Outcome) AppendBlobSplice(head, tail []byte) (prefix, suffix []byte, ok bool) {
	result := o.ResultJSON()
	if !o.HasBlob() || result[0] != '{' {
		return head, tail, false
	}
	head = append(head, '{')
	head = strconv.AppendQuote(head, o.BlobField)
	head = append(head, `: "`...)
	rest := bytes.TrimSpace(result[1:])
	tail = append(tail, '"')
	if len(rest) > 0 && rest[0] != '}' {
		tail = append(tail, ", "...)
	}
	tail = append(tail, rest...)
	return head, tail, true
}

// BlobTextLen is the length of the bulk data's base64 text.
func (o *Outcome) BlobTextLen() int {
	if o.BlobText != nil {
		return len(o.BlobText)
	}
	return base64.StdEncoding.EncodedLen(len(o.Blob))
}

// AppendBlobText appends the bulk data's base64 text (standard alphabet,
// padded) to dst: BlobText when read-ahead encoded it, else Blob encoded
// in one pass.
func (o *Outcome) AppendBlobText(dst []byte) []byte {
	if o.BlobText != nil {
		return append(dst, o.BlobText...)
	}
	n, size := len(dst), base64.StdEncoding.EncodedLen(len(o.Blob))
	dst = slices.Grow(dst, size)[:n+size]
	wire.EncodeBase64(dst[n:], o.Blob)
	return dst
}

// AppendResult appends the command's return value to dst with its bulk
// data in place (BlobSplice), "{}" when it has none: the whole result as
// JSON, for a dialect that builds its reply in one buffer.
func (o *Outcome) AppendResult(dst []byte) []byte {
	prefix, suffix, ok := o.BlobSplice()
	if !ok {
		return append(dst, o.ResultJSON()...)
	}
	dst = append(dst, prefix...)
	dst = o.AppendBlobText(dst)
	return append(dst, suffix...)
}

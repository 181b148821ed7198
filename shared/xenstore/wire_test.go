package xenstore_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/guest-agent/guest-agent/shared/xenstore"
)

func TestMessageEncoding(t *testing.T) {
	m := xenstore.Message{Type: xenstore.OpWrite, ReqID: 0x01020304, TxID: 7, Payload: []byte("/a\x00v")}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	want := []byte{
		11, 0, 0, 0, // type XS_WRITE
		4, 3, 2, 1, // req_id, little-endian
		7, 0, 0, 0, // tx_id
		4, 0, 0, 0, // len
		'/', 'a', 0, 'v',
	}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded % x, want % x", b, want)
	}
	got, err := xenstore.ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got.Type != m.Type || got.ReqID != m.ReqID || got.TxID != m.TxID || !bytes.Equal(got.Payload, m.Payload) {
		t.Fatalf("decoded %+v, want %+v", got, m)
	}
}

func TestMessageLimits(t *testing.T) {
	ok := xenstore.Message{Type: xenstore.OpRead, Payload: make([]byte, xenstore.PayloadMax)}
	if _, err := ok.MarshalBinary(); err != nil {
		t.Fatalf("payload of exactly PayloadMax refused: %v", err)
	}
	big := xenstore.Message{Type: xenstore.OpRead, Payload: make([]byte, xenstore.PayloadMax+1)}
	if _, err := big.MarshalBinary(); !errors.Is(err, xenstore.ErrPayloadTooLarge) {
		t.Fatalf("oversized payload: got %v, want ErrPayloadTooLarge", err)
	}

	// A header announcing too much must be refused before allocating it.
	hdr := []byte{2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x10, 0, 0} // len 4097
	if _, err := xenstore.ReadMessage(bytes.NewReader(hdr)); !errors.Is(err, xenstore.ErrPayloadTooLarge) {
		t.Fatalf("oversized incoming: got %v, want ErrPayloadTooLarge", err)
	}

	if _, err := xenstore.ReadMessage(bytes.NewReader(nil)); err != io.EOF {
		t.Fatalf("empty stream: got %v, want io.EOF", err)
	}
	trunc := []byte{2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 'a', 'b'}
	if _, err := xenstore.ReadMessage(bytes.NewReader(trunc)); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated payload: got %v, want io.ErrUnexpectedEOF", err)
	}
	if _, err := xenstore.ReadMessage(bytes.NewReader(trunc[:9])); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("truncated header: got %v, want io.ErrUnexpectedEOF", err)
	}
}

func TestStrings(t *testing.T) {
	if got := xenstore.JoinStrings("a", "", "bc"); !bytes.Equal(got, []byte("a\x00\x00bc\x00")) {
		t.Fatalf("JoinStrings = %q", got)
	}
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"\x00", []string{""}},
		{"a\x00", []string{"a"}},
		{"a\x00b\x00", []string{"a", "b"}},
		{"a\x00b", []string{"a", "b"}}, // missing final NUL tolerated
		{"p\x00\x00", []string{"p", ""}},
	}
	for _, c := range cases {
		if got := xenstore.SplitStrings([]byte(c.in)); !slices.Equal(got, c.want) {
			t.Errorf("SplitStrings(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestOpString(t *testing.T) {
	if s := xenstore.OpTransactionStart.String(); s != "TRANSACTION_START" {
		t.Fatalf("got %q", s)
	}
	if s := xenstore.Op(20).String(); s != "Op(20)" {
		t.Fatalf("got %q", s)
	}
}

func TestErrorMatching(t *testing.T) {
	err := error(&xenstore.Error{Op: xenstore.OpRead, Path: "/x", Code: "ENOENT"})
	if !errors.Is(err, xenstore.ErrNotFound) || errors.Is(err, xenstore.ErrAgain) {
		t.Fatalf("ENOENT matching wrong: %v", err)
	}
	if got := err.Error(); got != "xenstore: READ /x: ENOENT" {
		t.Fatalf("message %q", got)
	}
	odd := error(&xenstore.Error{Op: xenstore.OpRead, Code: "EWHATEVER"})
	for _, s := range []error{xenstore.ErrNotFound, xenstore.ErrInvalid, xenstore.ErrAgain} {
		if errors.Is(odd, s) {
			t.Fatalf("unknown code matched %v", s)
		}
	}
	if c := xenstore.ErrorCode(odd); c != "EWHATEVER" {
		t.Fatalf("ErrorCode(unknown) = %q", c)
	}
	if c := xenstore.ErrorCode(xenstore.ErrAgain); c != "EAGAIN" {
		t.Fatalf("ErrorCode(ErrAgain) = %q", c)
	}
}

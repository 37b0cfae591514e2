package wire

import (
	"testing"

	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestRecordRoundTrip(t *testing.T) {
	fp := Fingerprint{7}
	b, err := AppendOutcome(nil, fp, Outcome{Reply: wrapperspb.String("abc"),
		Header: map[string][]string{"a": {"1", "2"}}, Trailer: map[string][]string{"b": {"3"}}})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := DecodeRecord(b)
	if err != nil || !rec.Done || rec.FP != fp {
		t.Fatalf("decode: %+v, %v", rec, err)
	}
	o, err := rec.Outcome()
	if err != nil || string(o.ReplyBytes) != "\x0a\x03abc" || len(o.Header["a"]) != 2 || o.Trailer["b"][0] != "3" {
		t.Fatalf("outcome: %+v, %v", o, err)
	}
	for i := range b {
		if r, err := DecodeRecord(b[:i]); err == nil {
			if _, err := r.Outcome(); err == nil {
				t.Fatalf("truncated record of %d bytes decoded", i)
			}
		}
	}
}

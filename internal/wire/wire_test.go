package wire

import (
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// What the client writes, the server reads back: a resend's parameters
// round-trip, the age rounded up to the microsecond.
func TestResendParamsRoundTrip(t *testing.T) {
	v := "abc" + Advertise + ResendParams("s1", int64(1500*time.Microsecond)+1, "0123456789abcdef")
	id, p, err := ParseRequestID(v)
	if err != nil || id != "abc" || !p.Advertise || !p.Resend || p.Scope != "s1" || p.Age != 1501*time.Microsecond ||
		p.UntrustedAge || !p.Fenced || p.Fence != [8]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef} {
		t.Fatalf("%q: %q %+v %v", v, id, p, err)
	}
	if _, p, err := ParseRequestID("abc;resend-scope=;resend-age-ms=7"); err != nil || !p.UntrustedAge || p.Age != 7*time.Millisecond {
		t.Fatalf("resend-age-ms: %+v %v", p, err)
	}
	for _, bad := range []string{"", "a;b", "abc;resend-scope=s", "abc;resend-age-us=-1", "abc;resend-age-us=1;resend-fence=xyz"} {
		if _, _, err := ParseRequestID(bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%q: %v, want InvalidArgument", bad, err)
		}
	}
}

func TestAdvertRoundTrip(t *testing.T) {
	a, ok := ParseAdvert(metadata.MD{AdvertHeader: {FormatAdvert("mem-1", 1500)}})
	if !ok || a.Scope != "mem-1" || a.TTL != 1500*time.Millisecond {
		t.Fatalf("%+v %v", a, ok)
	}
	for _, bad := range []string{"scope=;ttl-ms=1", "scope=x;ttl-ms=0", "scope=x;ttl-ms=86400001"} {
		if _, ok := ParseAdvert(metadata.MD{AdvertHeader: {bad}}); ok {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestLookupReplies(t *testing.T) {
	fence := make([]byte, ClaimLen)
	FenceClaim(fence, Fingerprint{1}, [8]byte{0xff, 1})
	if r, ok := ParseLookupReply(LookupFencedReply(fence)); !ok || r.Fence != "ff01000000000000" || r.Outcome != nil {
		t.Fatalf("fenced: %+v %v", r, ok)
	}
	if r, ok := ParseLookupReply(LookupOutcomeReply([]byte("rec"))); !ok || string(r.Outcome) != "rec" {
		t.Fatalf("outcome: %+v %v", r, ok)
	}
	if _, ok := ParseLookupReply([]byte{'F', 1}); ok {
		t.Fatal("a short fence was accepted")
	}
}

func TestRewriteID(t *testing.T) {
	for _, c := range []struct{ v, drop, add, want string }{
		{"abc", "advertise", Advertise, "abc;advertise"},
		{"abc;advertise", "advertise", Advertise, "abc;advertise"},
		{"abc;advertise;resend-scope=s;resend-age-us=1", "resend-", "", "abc;advertise"},
	} {
		if got := RewriteID(c.v, c.drop, c.add); got != c.want {
			t.Errorf("RewriteID(%q, %q, %q) = %q, want %q", c.v, c.drop, c.add, got, c.want)
		}
	}
}

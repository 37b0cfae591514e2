// Package wire is the request-id deduplication protocol between grpcguard
// clients (the root package) and servers (package dedup): the metadata
// header names, the parameters a request id carries, the advert a server
// answers with, the dedup service's lookup method and its messages, and the
// records a store keeps (record.go), which a lookup answer carries. Each
// part is written here once and parsed here once, so that client and server
// cannot drift apart.
package wire

import (
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Metadata keys. They are grpcguard's own, so that they never clash with
// tracing or application headers such as x-request-id.
const (
	// RequestIDHeader carries a call's request id, then its parameters,
	// each after a ';'. dedup.RequestIDHeader documents them for users;
	// ParseRequestID reads them (the server), Advertise, ResendParams and
	// RewriteID write them (the client).
	RequestIDHeader = "grpcguard-request-id"
	// AdvertHeader is the response header by which a deduplicating server
	// says, when the call's id asked for it ("advertise"), that it
	// deduplicated the call, under which store scope and for how long it
	// keeps ids: "scope=<scope>;ttl-ms=<milliseconds>".
	AdvertHeader = "grpcguard-dedup"
	// ReplayedHeader is the response header, value "1", that marks a reply
	// (or error) answered from a stored outcome: the handler did not run for
	// this call, it ran once for an earlier one with the same id.
	ReplayedHeader = "grpcguard-dedup-replayed"
)

// ReplayedMD is ReplayedHeader's metadata. It is shared: never written.
var ReplayedMD = metadata.MD{ReplayedHeader: {"1"}}

// Advertise is the parameter a client appends to a request id to ask for
// AdvertHeader.
const Advertise = ";advertise"

// Retention bounds.
const (
	// DefaultTTL is how long a server keeps a request id and its outcome by
	// default, and what a client assumes of a server declared by hand: far
	// longer than any retry of a call (those come within the call's
	// deadline, seconds), short enough that a busy server's store stays
	// small.
	DefaultTTL = 5 * time.Minute
	// MinTTL and MaxTTL bound a server's TTL; MaxTTL also bounds the ages
	// and retentions either side accepts on the wire.
	MinTTL = time.Second
	MaxTTL = 24 * time.Hour
	// MaxRequestID is the longest request id accepted, in bytes.
	MaxRequestID = 128
)

// Params are the parameters that follow a request id in RequestIDHeader.
type Params struct {
	Advertise bool
	Resend    bool
	Scope     string        // resend-scope
	Age       time.Duration // resend-age-us, or resend-age-ms
	// UntrustedAge: the age came as resend-age-ms, from a client that
	// stamped it before the resend waited for a connection.
	UntrustedAge bool
	Fenced       bool    // resend-fence
	Fence        [8]byte // its token
}

// ParseRequestID splits a RequestIDHeader value into the id and its
// parameters. A value without parameters, the common case, costs one search
// for ';'. Errors are InvalidArgument statuses, for the caller.
func ParseRequestID(v string) (string, Params, error) {
	id, rest, found := strings.Cut(v, ";")
	var p Params
	if len(id) == 0 || len(id) > MaxRequestID {
		return "", p, status.Errorf(codes.InvalidArgument, "grpcguard: %s: the id must be 1 to %d bytes", RequestIDHeader, MaxRequestID)
	}
	if !found {
		return id, p, nil
	}
	seenScope := false
	for f := range strings.SplitSeq(rest, ";") {
		k, val, _ := strings.Cut(f, "=")
		switch k {
		case "advertise":
			p.Advertise = true
		case "resend-scope":
			p.Scope, seenScope = val, true
		case "resend-fence":
			if p.Fence, p.Fenced = fenceToken(val); !p.Fenced {
				return "", p, status.Errorf(codes.InvalidArgument, "grpcguard: %s: resend-fence must be 16 hex digits", RequestIDHeader)
			}
		case "resend-age-us", "resend-age-ms":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n < 0 || n > int64(MaxTTL/time.Microsecond) {
				return "", p, status.Errorf(codes.InvalidArgument, "grpcguard: %s: %s must be a duration up to 24h", RequestIDHeader, k)
			}
			unit := time.Microsecond
			if k == "resend-age-ms" {
				unit, p.UntrustedAge = time.Millisecond, true
			}
			p.Resend, p.Age = true, time.Duration(n)*unit
		default:
			// Refused rather than ignored: an application's own id that
			// contains ';' would otherwise be cut short and share its key
			// with others.
			return "", p, status.Errorf(codes.InvalidArgument, "grpcguard: %s: unknown parameter %q (an id must not contain ';')", RequestIDHeader, f)
		}
	}
	if (seenScope || p.Fenced) && !p.Resend {
		return "", p, status.Errorf(codes.InvalidArgument, "grpcguard: %s: resend-scope without resend-age-us", RequestIDHeader)
	}
	return id, p, nil
}

// ResendParams are the id parameters of a resend whose first attempt that
// may have run began age nanoseconds ago under scope: the age in
// microseconds, rounded up, never down; then the fence token (hex) when
// fence is not empty.
func ResendParams(scope string, age int64, fence string) string {
	us := (max(age, 0) + 999) / 1000
	v := ";resend-scope=" + scope + ";resend-age-us=" + strconv.FormatInt(us, 10)
	if fence != "" {
		v += ";resend-fence=" + fence
	}
	return v
}

// RewriteID returns the RequestIDHeader value v with its id and its
// parameters but those starting with drop, followed by add.
func RewriteID(v, drop, add string) string {
	id, rest, _ := strings.Cut(v, ";")
	var b strings.Builder
	b.WriteString(id)
	for f := range strings.SplitSeq(rest, ";") {
		if f != "" && !strings.HasPrefix(f, drop) {
			b.WriteString(";")
			b.WriteString(f)
		}
	}
	b.WriteString(add)
	return b.String()
}

// fenceToken parses a resend-fence parameter: 16 hex digits.
func fenceToken(v string) ([8]byte, bool) {
	var t [8]byte
	if len(v) != 16 {
		return t, false
	}
	_, err := hex.Decode(t[:], []byte(v))
	return t, err == nil
}

// Advert is a parsed AdvertHeader.
type Advert struct {
	Scope string        // the store's scope
	TTL   time.Duration // how long the store keeps ids
}

// FormatAdvert returns the AdvertHeader value of a store with scope that
// keeps ids ms milliseconds.
func FormatAdvert(scope string, ms int64) string {
	return "scope=" + scope + ";ttl-ms=" + strconv.FormatInt(ms, 10)
}

// ParseAdvert returns the advert in md, if it holds one valid one.
func ParseAdvert(md metadata.MD) (Advert, bool) {
	vs := md[AdvertHeader]
	if len(vs) != 1 {
		return Advert{}, false
	}
	var a Advert
	for f := range strings.SplitSeq(vs[0], ";") {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "scope":
			a.Scope = v
		case "ttl-ms":
			ms, err := strconv.ParseInt(v, 10, 64)
			if err != nil || ms <= 0 || ms > int64(MaxTTL/time.Millisecond) {
				return Advert{}, false
			}
			a.TTL = time.Duration(ms) * time.Millisecond
		}
	}
	if a.Scope == "" || a.TTL == 0 {
		return Advert{}, false
	}
	return a, true
}

// The dedup service. Its one method's request and response are
// google.protobuf.BytesValue: the request's value is the call's
// fingerprint (FPLen bytes), with the call's request id and its resend
// parameters, fence included, in RequestIDHeader; the response's is one of
// the lookup answers below.
const (
	LookupService = "grpcguard.dedup.v1.Dedup"
	// LookupMethodName is the method's name within LookupService.
	LookupMethodName = "Lookup"
	// LookupMethod is the method's full name.
	LookupMethod = "/" + LookupService + "/" + LookupMethodName
)

// Lookup answers: a tag, then its payload.
const (
	lookupOutcome = 'O' // followed by the outcome record
	lookupFenced  = 'F' // followed by the fence's 8-byte token
)

// LookupOutcomeReply is the lookup answer that returns rec, a done record.
func LookupOutcomeReply(rec []byte) []byte {
	return append([]byte{lookupOutcome}, rec...)
}

// LookupFencedReply is the lookup answer that the fence claim (see
// FenceClaim) stands for the resend.
func LookupFencedReply(fence []byte) []byte {
	return append([]byte{lookupFenced}, fence[1+FPLen:]...)
}

// LookupReply is a parsed lookup answer: one of its fields is set.
type LookupReply struct {
	Outcome []byte // the outcome record found
	Fence   string // the fence's token, in hex
}

// ParseLookupReply parses a lookup answer.
func ParseLookupReply(b []byte) (LookupReply, bool) {
	switch {
	case len(b) == 1+8 && b[0] == lookupFenced:
		return LookupReply{Fence: hex.EncodeToString(b[1:])}, true
	case len(b) > 1 && b[0] == lookupOutcome:
		return LookupReply{Outcome: b[1:]}, true
	}
	return LookupReply{}, false
}

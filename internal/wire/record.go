package wire

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
)

// What a deduplicating server keeps in a store under a request id: a claim while
// the call runs, then its outcome. Both start with the Fingerprint of the
// request, so that a request reusing the id with other content is told apart
// and never reads the outcome.
//
//	claim:   'C' Fingerprint[32] token[8]
//	outcome: 'O' Fingerprint[32] status reply header trailer
//
// where status and reply are uvarint-length-prefixed bytes (the status as a
// google.rpc.Status message, the reply as its protobuf encoding) and each
// metadata block is a uvarint count of pairs followed by length-prefixed keys
// and values. The token makes each claim unique, so that Finish and Release
// act only on the claim their own execution made.

const (
	recClaim   = 'C'
	recOutcome = 'O'
	// FPLen is the length of a Fingerprint.
	FPLen = sha256.Size
	// ClaimLen is the length of a claim record.
	ClaimLen = 1 + FPLen + 8
)

// ErrBadRecord is returned for bytes that are no record.
var ErrBadRecord = errors.New("grpcguard: malformed dedup record")

// Fingerprint is the SHA-256 of the method's prefix (MethodPrefix) and the
// request's deterministic protobuf encoding. A cryptographic hash, because a
// collision would hand one request the outcome of another.
type Fingerprint [FPLen]byte

// marshalBufs holds the buffers requests and outcomes are encoded in, so
// that fingerprinting and storing allocate nothing once a buffer has grown.
// A buffer grown past maxPooledBuf by a large message is left to the
// collector, so that the pool does not pin it.
var marshalBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledBuf = 64 << 10

// MethodPrefix stands for a method in its requests' fingerprints: the first
// 16 bytes of the SHA-256 of its full name, computed once per method, in
// place of the name (often 30 to 60 bytes), so that a request of up to 39
// bytes is fingerprinted in one SHA-256 block instead of two. Truncated to
// 128 bits, the digests of a server's own methods, which no caller chooses,
// do not collide.
type MethodPrefix [16]byte

// PrefixOf returns method's MethodPrefix.
func PrefixOf(method string) MethodPrefix {
	d := sha256.Sum256([]byte(method))
	return MethodPrefix(d[:16])
}

// FingerprintOf returns the fingerprint of req, a request of the method
// whose prefix is method.
func FingerprintOf(method MethodPrefix, req proto.Message) (Fingerprint, error) {
	bp := marshalBufs.Get().(*[]byte)
	defer marshalBufs.Put(bp)
	b := append((*bp)[:0], method[:]...)
	// AllowPartial: grpc decoded the request already; checking its required
	// fields again would only cost time.
	b, err := proto.MarshalOptions{Deterministic: true, AllowPartial: true}.MarshalAppend(b, req)
	if err != nil {
		return Fingerprint{}, err
	}
	if cap(b) <= maxPooledBuf {
		*bp = b[:0]
	}
	return sha256.Sum256(b), nil
}

// FillClaim writes into b, ClaimLen bytes, a claim record for fp with a
// fresh token.
func FillClaim(b []byte, fp Fingerprint) {
	b[0] = recClaim
	copy(b[1:], fp[:])
	binary.LittleEndian.PutUint64(b[1+FPLen:], rand.Uint64())
}

// FenceClaim writes into claim the fence claim of fp with token: a resend
// that carries the token (the resend-fence parameter) finds the fence in its
// store and runs under it.
func FenceClaim(claim []byte, fp Fingerprint, token [8]byte) {
	claim[0] = recClaim
	copy(claim[1:], fp[:])
	binary.LittleEndian.PutUint64(claim[1+FPLen:], binary.LittleEndian.Uint64(token[:]))
}

// Outcome is a stored result of a call: Reply when encoding it, ReplyBytes
// when decoding it.
type Outcome struct {
	Status  *spb.Status   // nil for OK
	Reply   proto.Message // encoding: nil when the call failed
	Header  metadata.MD
	Trailer metadata.MD

	ReplyBytes []byte // decoding
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendString(b []byte, v string) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendMD(b []byte, md metadata.MD) []byte {
	if len(md) == 0 {
		return append(b, 0)
	}
	n := 0
	for _, vs := range md {
		n += len(vs)
	}
	b = binary.AppendUvarint(b, uint64(n))
	for k, vs := range md {
		for _, v := range vs {
			b = appendString(appendString(b, k), v)
		}
	}
	return b
}

// AppendOutcome appends the outcome record of o for fp to b.
func AppendOutcome(b []byte, fp Fingerprint, o Outcome) ([]byte, error) {
	b = append(b, recOutcome)
	b = append(b, fp[:]...)
	if o.Status != nil && o.Status.GetCode() != 0 {
		st, err := proto.Marshal(o.Status)
		if err != nil {
			return nil, err
		}
		b = appendBytes(b, st)
	} else {
		b = binary.AppendUvarint(b, 0)
	}
	if o.Reply != nil {
		b = binary.AppendUvarint(b, uint64(proto.Size(o.Reply)))
		var err error
		// AllowPartial: a reply missing required fields fails grpc's own
		// encoding, before and after a replay alike.
		if b, err = (proto.MarshalOptions{UseCachedSize: true, AllowPartial: true}).MarshalAppend(b, o.Reply); err != nil {
			return nil, err
		}
	} else {
		b = binary.AppendUvarint(b, 0)
	}
	b = appendMD(b, o.Header)
	return appendMD(b, o.Trailer), nil
}

// EncodeOutcome encodes the outcome record of o for fp in a pooled buffer
// and passes it to use, which must not keep it.
func EncodeOutcome(fp Fingerprint, o Outcome, use func([]byte) error) error {
	bp := marshalBufs.Get().(*[]byte)
	defer marshalBufs.Put(bp)
	b, err := AppendOutcome((*bp)[:0], fp, o)
	if err != nil {
		return err
	}
	err = use(b)
	if cap(b) <= maxPooledBuf {
		*bp = b[:0]
	}
	return err
}

// Record is a decoded store value: a claim, or an outcome when Done.
type Record struct {
	Done bool // an outcome; otherwise a claim
	FP   Fingerprint
	rest []byte // the outcome's fields, undecoded
}

// DecodeRecord decodes a store value; the record keeps b.
func DecodeRecord(b []byte) (Record, error) {
	if len(b) < 1+FPLen || (b[0] != recClaim && b[0] != recOutcome) || (b[0] == recClaim && len(b) != ClaimLen) {
		return Record{}, ErrBadRecord
	}
	r := Record{Done: b[0] == recOutcome, rest: b[1+FPLen:]}
	copy(r.FP[:], b[1:])
	return r, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) bytes() []byte {
	n, k := binary.Uvarint(r.b)
	if k <= 0 || n > uint64(len(r.b)-k) {
		r.err = ErrBadRecord
		r.b = nil
		return nil
	}
	v := r.b[k : k+int(n)]
	r.b = r.b[k+int(n):]
	return v
}

func (r *reader) md() metadata.MD {
	n, k := binary.Uvarint(r.b)
	if k <= 0 || n > uint64(len(r.b)) {
		r.err = ErrBadRecord
		return nil
	}
	r.b = r.b[k:]
	if n == 0 {
		return nil
	}
	md := make(metadata.MD, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		k, v := string(r.bytes()), string(r.bytes())
		md[k] = append(md[k], v)
	}
	return md
}

// Outcome decodes the outcome fields of a done record.
func (rec Record) Outcome() (Outcome, error) {
	r := reader{b: rec.rest}
	st := r.bytes()
	reply := r.bytes()
	o := Outcome{Header: r.md(), Trailer: r.md()}
	if r.err != nil || len(r.b) != 0 {
		return Outcome{}, ErrBadRecord
	}
	if len(st) != 0 { // OK is stored as no status
		o.Status = new(spb.Status)
		if err := proto.Unmarshal(st, o.Status); err != nil {
			return Outcome{}, ErrBadRecord
		}
	}
	if o.Status.GetCode() == 0 {
		o.ReplyBytes = reply
	}
	return o, nil
}

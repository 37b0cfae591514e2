package grpcguard

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

// What UnaryServerDedup keeps in a Store under a request id: a claim while
// the call runs, then its outcome. Both start with the fingerprint of the
// request, so that a request reusing the id with other content is told apart
// and never reads the outcome.
//
//	claim:   'C' fingerprint[32] token[8]
//	outcome: 'O' fingerprint[32] status reply header trailer
//
// where status and reply are uvarint-length-prefixed bytes (the status as a
// google.rpc.Status message, the reply as its protobuf encoding) and each
// metadata block is a uvarint count of pairs followed by length-prefixed keys
// and values. The token makes each claim unique, so that Finish and Release
// act only on the claim their own execution made.

const (
	recClaim   = 'C'
	recOutcome = 'O'
	fpLen      = sha256.Size
	claimLen   = 1 + fpLen + 8
)

var errBadRecord = errors.New("grpcguard: malformed dedup record")

// fingerprint is the SHA-256 of the method's prefix (methodPrefix) and the
// request's deterministic protobuf encoding. A cryptographic hash, because a
// collision would hand one request the outcome of another.
type fingerprint [fpLen]byte

// marshalBufs holds the buffers requests and outcomes are encoded in, so
// that fingerprinting and storing allocate nothing once a buffer has grown.
// A buffer grown past maxPooledBuf by a large message is left to the
// collector, so that the pool does not pin it.
var marshalBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledBuf = 64 << 10

// methodPrefix stands for a method in its requests' fingerprints: the first
// 16 bytes of the SHA-256 of its full name, computed once per method, in
// place of the name (often 30 to 60 bytes), so that a request of up to 39
// bytes is fingerprinted in one SHA-256 block instead of two. Truncated to
// 128 bits, the digests of a server's own methods, which no caller chooses,
// do not collide.
type methodPrefix [16]byte

func prefixOf(method string) methodPrefix {
	d := sha256.Sum256([]byte(method))
	return methodPrefix(d[:16])
}

func fingerprintOf(method methodPrefix, req proto.Message) (fingerprint, error) {
	bp := marshalBufs.Get().(*[]byte)
	defer marshalBufs.Put(bp)
	b := append((*bp)[:0], method[:]...)
	// AllowPartial: grpc decoded the request already; checking its required
	// fields again would only cost time.
	b, err := proto.MarshalOptions{Deterministic: true, AllowPartial: true}.MarshalAppend(b, req)
	if err != nil {
		return fingerprint{}, err
	}
	if cap(b) <= maxPooledBuf {
		*bp = b[:0]
	}
	return sha256.Sum256(b), nil
}

// fillClaim writes into b, claimLen bytes, a claim record for fp with a
// fresh token.
func fillClaim(b []byte, fp fingerprint) {
	b[0] = recClaim
	copy(b[1:], fp[:])
	binary.LittleEndian.PutUint64(b[1+fpLen:], rand.Uint64())
}

// storedOutcome is a stored result of a call.
type storedOutcome struct {
	status  *spb.Status   // nil for OK
	reply   proto.Message // encoding: nil when the call failed
	header  metadata.MD
	trailer metadata.MD

	replyBytes []byte // decoding
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

// appendOutcome appends the outcome record of o for fp to b.
func appendOutcome(b []byte, fp fingerprint, o storedOutcome) ([]byte, error) {
	b = append(b, recOutcome)
	b = append(b, fp[:]...)
	if o.status != nil && o.status.GetCode() != 0 {
		st, err := proto.Marshal(o.status)
		if err != nil {
			return nil, err
		}
		b = appendBytes(b, st)
	} else {
		b = binary.AppendUvarint(b, 0)
	}
	if o.reply != nil {
		b = binary.AppendUvarint(b, uint64(proto.Size(o.reply)))
		var err error
		// AllowPartial: a reply missing required fields fails grpc's own
		// encoding, before and after a replay alike.
		if b, err = (proto.MarshalOptions{UseCachedSize: true, AllowPartial: true}).MarshalAppend(b, o.reply); err != nil {
			return nil, err
		}
	} else {
		b = binary.AppendUvarint(b, 0)
	}
	b = appendMD(b, o.header)
	return appendMD(b, o.trailer), nil
}

// record is a decoded store value.
type record struct {
	done bool // an outcome; otherwise a claim
	fp   fingerprint
	rest []byte // the outcome's fields, undecoded
}

func decodeRecord(b []byte) (record, error) {
	if len(b) < 1+fpLen || (b[0] != recClaim && b[0] != recOutcome) || (b[0] == recClaim && len(b) != claimLen) {
		return record{}, errBadRecord
	}
	r := record{done: b[0] == recOutcome, rest: b[1+fpLen:]}
	copy(r.fp[:], b[1:])
	return r, nil
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) bytes() []byte {
	n, k := binary.Uvarint(r.b)
	if k <= 0 || n > uint64(len(r.b)-k) {
		r.err = errBadRecord
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
		r.err = errBadRecord
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

// outcome decodes the outcome fields of a done record.
func (rec record) outcome() (storedOutcome, error) {
	r := reader{b: rec.rest}
	st := r.bytes()
	reply := r.bytes()
	o := storedOutcome{header: r.md(), trailer: r.md()}
	if r.err != nil || len(r.b) != 0 {
		return storedOutcome{}, errBadRecord
	}
	if len(st) != 0 { // OK is stored as no status
		o.status = new(spb.Status)
		if err := proto.Unmarshal(st, o.status); err != nil {
			return storedOutcome{}, errBadRecord
		}
	}
	if o.status.GetCode() == 0 {
		o.replyBytes = reply
	}
	return o, nil
}

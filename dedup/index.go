package dedup

import "math/bits"

// hashIndex maps 64-bit key hashes to 64-bit values for MemoryStore: an
// open-addressing table with linear probing, an eighth to half full, and
// deletion by backward shift, so that it never holds tombstones. A Go map
// churned by the store's inserts and deletes fills with tombstones that
// every miss (a new request id, the common lookup) probes past, about twice
// as slow; and a Go map takes a second probe to insert the key it was just
// asked for, where slot returns the empty slot to fill. The table has no
// pointers: the garbage collector never scans it.
//
// A slot's home is the top bits of its hash: the store picks shards by the
// low ones. Hash 0 marks an empty slot; a key hash of 0 is stored as 1 (the
// store compares the key itself, so the two stay apart).
type hashIndex struct {
	slots []hashSlot // len a power of two, or 0
	shift uint       // 64 - log2(len(slots))
	n     int
}

type hashSlot struct{ h, v uint64 }

const minIndexSlots = 16

func indexHash(h uint64) uint64 { return max(h, 1) }

// slot returns the index of the slot of h, or of the empty slot where it
// belongs, and whether h is there. It is valid until the next fill or del.
func (x *hashIndex) slot(h uint64) (uint64, bool) {
	if len(x.slots) == 0 {
		x.init(minIndexSlots)
	}
	h = indexHash(h)
	mask := uint64(len(x.slots) - 1)
	for i := h >> x.shift; ; i = (i + 1) & mask {
		switch x.slots[i].h {
		case h:
			return i, true
		case 0:
			return i, false
		}
	}
}

// get returns the value of h.
func (x *hashIndex) get(h uint64) (uint64, bool) {
	if x.n == 0 {
		return 0, false
	}
	i, ok := x.slot(h)
	return x.slots[i].v, ok
}

// fill stores v in slot i, which slot returned for h; if h was not there,
// the table may grow, and slot indexes are then invalid.
func (x *hashIndex) fill(i uint64, found bool, h, v uint64) {
	x.slots[i].v = v
	if found {
		return
	}
	x.slots[i].h = indexHash(h)
	x.n++
	if 2*x.n > len(x.slots) {
		x.grow(2 * len(x.slots))
	}
}

// put stores v under h.
func (x *hashIndex) put(h, v uint64) {
	i, found := x.slot(h)
	x.fill(i, found, h, v)
}

// del removes h, shifting back into its slot each entry after it that
// probed past it.
func (x *hashIndex) del(h uint64) {
	if x.n == 0 {
		return
	}
	if i, found := x.slot(h); found {
		x.delAt(i)
	}
}

// delAt removes the entry in slot i.
func (x *hashIndex) delAt(hole uint64) {
	mask := uint64(len(x.slots) - 1)
	for j := (hole + 1) & mask; x.slots[j].h != 0; j = (j + 1) & mask {
		home := x.slots[j].h >> x.shift
		if (j-home)&mask >= (j-hole)&mask { // the hole lies between its home and j
			x.slots[hole] = x.slots[j]
			hole = j
		}
	}
	x.slots[hole] = hashSlot{}
	x.n--
	if 8*x.n < len(x.slots) && len(x.slots) > minIndexSlots {
		x.grow(len(x.slots) / 2) // at a quarter full: a burst's table does not stay
	}
}

// bytes is the memory the table holds.
func (x *hashIndex) bytes() int64 { return int64(len(x.slots)) * 16 }

// growth is the memory one more entry would add to the table.
func (x *hashIndex) growth() int64 {
	switch {
	case len(x.slots) == 0:
		return minIndexSlots * 16
	case 2*(x.n+1) > len(x.slots):
		return x.bytes()
	}
	return 0
}

func (x *hashIndex) init(size int) {
	x.slots = make([]hashSlot, size)
	x.shift = uint(64 - bits.TrailingZeros(uint(size)))
	x.n = 0
}

// grow moves the entries into a new table of size slots.
func (x *hashIndex) grow(size int) {
	old := x.slots
	x.init(size)
	for _, s := range old {
		if s.h != 0 {
			x.put(s.h, s.v)
		}
	}
}

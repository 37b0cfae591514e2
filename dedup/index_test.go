package dedup

import (
	"math/rand/v2"
	"testing"
)

// TestHashIndexMatchesMap: random puts, gets and deletes agree with a Go
// map, with hashes crowded into few homes (long probe runs that wrap around
// the table's end) and the hash 0.
func TestHashIndexMatchesMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, spread := range []uint64{3, 64, 1 << 20} {
		var x hashIndex
		ref := map[uint64]uint64{}
		var keys []uint64
		for op := range 30000 {
			var h uint64
			if len(keys) > 0 && rng.IntN(2) == 0 {
				h = keys[rng.IntN(len(keys))]
			} else {
				// High bits pick the home: few values crowd homes together,
				// and homes near the top wrap around.
				h = rng.Uint64N(spread)<<40 | rng.Uint64N(1<<40)
				if rng.IntN(1000) == 0 {
					h = 0
				}
				keys = append(keys, h)
			}
			switch rng.IntN(3) {
			case 0:
				x.put(h, uint64(op))
				ref[indexHash(h)] = uint64(op)
			case 1:
				x.del(h)
				delete(ref, indexHash(h))
			}
			v, ok := x.get(h)
			if rv, rok := ref[indexHash(h)]; ok != rok || v != rv {
				t.Fatalf("spread %d op %d: get(%#x) = %d, %v; want %d, %v", spread, op, h, v, ok, rv, rok)
			}
			if x.n != len(ref) {
				t.Fatalf("spread %d op %d: %d entries, want %d", spread, op, x.n, len(ref))
			}
		}
		for h, v := range ref {
			if got, ok := x.get(h); !ok || got != v {
				t.Fatalf("spread %d: entry %#x lost", spread, h)
			}
		}
	}
}

// TestHashIndexShrinks: a table emptied after a burst gives its memory
// back, and keeps every entry it still holds.
func TestHashIndexShrinks(t *testing.T) {
	var x hashIndex
	for h := uint64(1); h <= 10000; h++ {
		x.put(h*0x9e3779b97f4a7c15, h)
	}
	big := x.bytes()
	for h := uint64(1); h <= 10000; h++ {
		x.del(h * 0x9e3779b97f4a7c15)
		if h%97 == 0 {
			for k := h + 1; k <= 10000; k += 131 {
				if v, ok := x.get(k * 0x9e3779b97f4a7c15); !ok || v != k {
					t.Fatalf("after %d deletes: entry %d lost", h, k)
				}
			}
		}
	}
	if x.n != 0 || x.bytes() != minIndexSlots*16 || big < 20000*16 {
		t.Fatalf("%d entries, %d bytes after the burst's %d: want 0 and the minimum", x.n, x.bytes(), big)
	}
}

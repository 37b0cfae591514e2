//go:build linux

package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The delay wire's addresses: a point-to-point /32 pair on the TUN devices,
// private and used only inside the two namespaces of one Delayed, like the
// /30s of a Net (10.213.1.0/30, 10.213.2.0/30), from which they differ.
const (
	DelayClientIP = "10.213.3.1"
	DelayServerIP = "10.213.3.2"
)

const (
	tunDev = "gg-wire" // the TUN device, in each namespace
	// wireMTU is the TUN devices' MTU; packetBuf, above it, is the size of
	// the copier's buffers. IFF_TUN without IFF_VNET_HDR does no offload:
	// every read is one IP packet of at most the MTU.
	wireMTU   = 1500
	packetBuf = 2048
	// wireQueue is how many packets a direction holds in flight; when it is
	// full the reader stops reading and the TUN device's own queue (500
	// packets) drops, as a full link would.
	wireQueue = 4096
)

// Delayed is a wire with a one-way delay, made without netem: a client and a
// server namespace, each with a TUN device holding one end of a
// point-to-point pair (DelayClientIP, DelayServerIP), and a copier in this
// process that reads each IP packet from one device and writes it to the
// other OneWay after it was read.
//
//	Client DelayClientIP --TUN-- copier, OneWay each way --TUN-- DelayServerIP Server
//
// TCP stays end to end: the kernels of Client and Server talk to each other,
// so a keepalive probe and its ACK cross the delay, which no TCP proxy can
// arrange (its own kernel answers the probe). The copier adds its own
// latency to OneWay: the time to read, to wake on time and to write
// (TestDelayedCopierLatency measures it). Close stops the copier and deletes
// everything. Methods are safe for concurrent use.
type Delayed struct {
	Client, Server Namespace
	OneWay         time.Duration

	tun     [2]*os.File // in Client, in Server
	stopped atomic.Bool // set by Close: drop what is still in flight
	wg      sync.WaitGroup
	errOnce sync.Once
	err     error // the copier's first error, set once, read by Close after wg.Wait
}

// NewDelayed builds a Delayed with oneWay (0 or more) each way. An error
// wrapping ErrUnsupported means the machine does not allow it: not root, no
// ip, no TUN driver.
func NewDelayed(oneWay time.Duration) (*Delayed, error) {
	if oneWay < 0 {
		return nil, fmt.Errorf("netns: one-way delay %v: want 0 or more", oneWay)
	}
	if err := Check(); err != nil {
		return nil, err
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return nil, unsupportedf("no /dev/net/tun: the kernel has no TUN driver (%v)", err)
	}
	removeStale()
	base := fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), seq.Add(1))
	d := &Delayed{Client: Namespace(base + "c"), Server: Namespace(base + "s"), OneWay: oneWay}
	if err := d.build(); err != nil {
		d.Close()
		return nil, err
	}
	for i := range 2 {
		d.wg.Add(1)
		go d.copy(d.tun[i], d.tun[1-i])
	}
	return d, nil
}

func (d *Delayed) build() error {
	ends := []struct {
		ns         Namespace
		local, far string
	}{{d.Client, DelayClientIP, DelayServerIP}, {d.Server, DelayServerIP, DelayClientIP}}
	for i, e := range ends {
		if err := ipCmd("netns", "add", string(e.ns)); err != nil {
			if i == 0 {
				return unsupportedf("cannot create a network namespace: %v", err)
			}
			return err
		}
		f, err := openTUN(e.ns, tunDev)
		if err != nil {
			return err
		}
		d.tun[i] = f
		for _, s := range [][]string{
			{"link", "set", "lo", "up"},
			{"link", "set", tunDev, "mtu", fmt.Sprint(wireMTU), "up"},
			{"addr", "add", e.local + "/32", "peer", e.far + "/32", "dev", tunDev},
		} {
			if err := e.ns.ip(s...); err != nil {
				return err
			}
		}
		// No IPv6 chatter (router solicitations) on the wire.
		e.ns.sysctl("net.ipv6.conf."+tunDev+".disable_ipv6", "1")
	}
	return nil
}

// openTUN creates the TUN device name in ns (IFF_TUN|IFF_NO_PI: each read
// and write is one bare IP packet) and returns its file, non-blocking so
// that Close interrupts a Read. The device is created in the namespace of
// the thread that opens /dev/net/tun, and is deleted when the file closes.
func openTUN(ns Namespace, name string) (*os.File, error) {
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return unsupportedf("cannot open /dev/net/tun: %v", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err == nil {
			err = unix.SetNonblock(fd, true)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("netns: create TUN device %s in %s: %w", name, ns, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// packet is one IP packet in flight and the time it is due at the far end.
type packet struct {
	buf *[]byte
	n   int
	due unix.Timespec // CLOCK_MONOTONIC
}

var packets = sync.Pool{New: func() any { b := make([]byte, packetBuf); return &b }}

// copy moves packets from src to dst, each OneWay after it was read, in the
// order they were read. The reader stamps each packet and queues it (the
// channel is the FIFO); the writer, on a thread of its own, sleeps to each
// packet's due time with clock_nanosleep(TIMER_ABSTIME) and writes it. A
// packet never waits for the one before it longer than its own due time,
// since due times grow with the queue. Buffers come from a pool: no
// allocation per packet once the pool is warm.
func (d *Delayed) copy(src, dst *os.File) {
	defer d.wg.Done()
	queue := make(chan packet, wireQueue)
	d.wg.Add(1)
	go d.deliver(queue, dst)
	defer close(queue)
	for {
		buf := packets.Get().(*[]byte)
		n, err := src.Read(*buf)
		if err != nil {
			packets.Put(buf)
			if !errors.Is(err, os.ErrClosed) && !d.stopped.Load() {
				d.setErr(fmt.Errorf("netns: delay wire: read: %w", err))
			}
			return
		}
		queue <- packet{buf: buf, n: n, due: monotonic(d.OneWay)}
	}
}

// deliver writes each queued packet to dst at its due time.
func (d *Delayed) deliver(queue <-chan packet, dst *os.File) {
	defer d.wg.Done()
	// The thread sleeps in clock_nanosleep, not in the Go scheduler: it is
	// woken at the due time by the kernel's hrtimer, not on the runtime's
	// next poll.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// And on time: the default timer slack lets the kernel wake a sleeper
	// up to 50 µs late to batch wake-ups. The thread's own slack is
	// restored before it is unlocked.
	if slack, err := unix.PrctlRetInt(unix.PR_GET_TIMERSLACK, 0, 0, 0, 0); err == nil {
		unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
		defer unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(slack), 0, 0, 0)
	}
	for p := range queue {
		if !d.stopped.Load() {
			for unix.ClockNanosleep(unix.CLOCK_MONOTONIC, unix.TIMER_ABSTIME, &p.due, nil) == unix.EINTR {
			}
			// A write error (the far device is gone, its queue full) is a
			// lost packet, as on a real wire.
			dst.Write((*p.buf)[:p.n])
		}
		packets.Put(p.buf)
	}
}

// monotonic returns CLOCK_MONOTONIC now plus after.
func monotonic(after time.Duration) unix.Timespec {
	var now unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &now)
	return unix.NsecToTimespec(now.Nano() + int64(after))
}

func (d *Delayed) setErr(err error) {
	d.errOnce.Do(func() { d.err = err })
}

// Close stops the copier, closes the TUN devices (which deletes them),
// kills anything still in the namespaces and deletes them. It is idempotent
// and returns the first error, including one the copier met while running.
func (d *Delayed) Close() error {
	if d.stopped.Swap(true) {
		return nil
	}
	for _, f := range d.tun {
		if f != nil {
			f.Close()
		}
	}
	d.wg.Wait() // after it, the copier sets no error: d.err is read safely
	first := d.err
	for _, ns := range []Namespace{d.Client, d.Server} {
		if err := deleteNamespace(ns); err != nil && first == nil {
			first = err
		}
	}
	return first
}

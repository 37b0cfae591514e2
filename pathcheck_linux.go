package grpcguard

import (
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// pathCheck runs the keepalive round trip on one TCP socket (see
// pathcheck.go). Its callbacks are bound once, so a check allocates nothing.
type pathCheck struct {
	rc syscall.RawConn

	// mu serialises checks; concurrent writers after the same idle period
	// share the answer of the check that ran (at >= their own entry).
	mu       sync.Mutex
	doneAt   int64
	lastRes  verifyResult
	rttUs    uint32 // smoothed RTT from the last TCP_INFO read
	keepIdle int32  // TCP_KEEPIDLE found at dial: restored after each kick
	keepOn   int32  // SO_KEEPALIVE found at dial
	syscalls int    // made by the last check, for the benchmark
	runs     int    // checks run, for the tests

	// Scratch for the callbacks, owned by the holder of mu.
	val     int32
	info    unix.TCPInfo
	infoLen uint32
	errno   syscall.Errno

	kickFn, restoreFn, infoFn func(fd uintptr)
}

func (p *pathCheck) init(rc syscall.RawConn) {
	p.kickFn, p.restoreFn, p.infoFn = p.kick, p.restore, p.readInfo
	ok := rc.Control(func(fd uintptr) {
		p.keepOn = getsockoptInt32(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		p.keepIdle = getsockoptInt32(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		p.readInfo(fd)
	}) == nil && p.errno == 0 && p.keepIdle > 0
	if ok {
		p.rttUs = p.info.Rtt
		p.rc = rc
	}
}

func (p *pathCheck) ok() bool { return p.rc != nil }

func getsockoptInt32(fd uintptr, level, opt int) int32 {
	var v int32
	l := uint32(4)
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&l)), 0)
	if e != 0 {
		return -1
	}
	return v
}

func (p *pathCheck) setsockopt(fd uintptr, level, opt int, v int32) {
	p.syscalls++
	p.val = v
	_, _, e := unix.RawSyscall6(unix.SYS_SETSOCKOPT, fd, uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&p.val)), 4, 0)
	if e != 0 && p.errno == 0 {
		p.errno = e
	}
}

// kick makes the kernel send a keepalive probe on its next tick.
func (p *pathCheck) kick(fd uintptr) {
	if p.keepOn == 0 {
		p.setsockopt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1)
	}
	p.setsockopt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 1)
}

// restore puts the keepalive back as it was found at dial.
func (p *pathCheck) restore(fd uintptr) {
	p.setsockopt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, p.keepIdle)
	if p.keepOn == 0 {
		p.setsockopt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, 0)
	}
}

func (p *pathCheck) readInfo(fd uintptr) {
	p.syscalls++
	p.infoLen = uint32(unsafe.Sizeof(p.info))
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, fd, unix.IPPROTO_TCP, unix.TCP_INFO,
		uintptr(unsafe.Pointer(&p.info)), uintptr(unsafe.Pointer(&p.infoLen)), 0)
	p.errno = e
}

// verify runs one check on a socket idle at least 1s (TCP_KEEPIDLE counts
// whole seconds and re-arms at once only when it is not above the time since
// the socket last received).
func (p *pathCheck) verify() verifyResult {
	entered := nanotime()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.doneAt >= entered {
		return p.lastRes // a check ran while this caller waited for it
	}
	r := p.run()
	p.runs++
	p.doneAt, p.lastRes = nanotime(), r
	return r
}

func (p *pathCheck) run() verifyResult {
	p.errno, p.syscalls = 0, 0
	if p.rc.Control(p.kickFn) != nil {
		return verifyStale // closed meanwhile
	}
	if p.errno != 0 {
		return verifyUnanswered // the kernel refused the kick: say nothing
	}
	kick := nanotime()
	defer p.rc.Control(p.restoreFn)
	rtt := time.Duration(p.rttUs) * time.Microsecond
	bound := min(2*rtt+pathTickSlack, pathCheckCap)
	step := max(pathPollEvery, rtt/4)
	time.Sleep(rtt + step)
	for {
		if p.rc.Control(p.infoFn) != nil || p.errno != 0 {
			return verifyStale
		}
		elapsed := time.Duration(nanotime() - kick)
		switch p.info.State {
		case unix.BPF_TCP_ESTABLISHED:
		default:
			return verifyStale // reset (CLOSE), or the peer closed meanwhile
		}
		if p.info.Rtt != 0 {
			p.rttUs = p.info.Rtt
		}
		// tcpi_last_ack_recv counts whole jiffies in ms: an ACK received
		// since the kick reads at most elapsed plus one jiffy (10 ms at the
		// lowest HZ); before the kick the socket had been idle >= 1s.
		if p.info.Probes == 0 && time.Duration(p.info.Last_ack_recv)*time.Millisecond <= elapsed+10*time.Millisecond {
			return verifyAlive
		}
		if elapsed >= bound {
			return verifyUnanswered
		}
		time.Sleep(min(step, bound-elapsed))
	}
}

// pathIdle returns how long the socket has received nothing, keepalive ACKs
// included: the kernel's own measure of idle for keepalive (the smaller of
// tcpi_last_data_recv and tcpi_last_ack_recv), in whole milliseconds. ok is
// false when TCP_INFO cannot be read (the socket is closed).
func (p *pathCheck) pathIdle() (idle time.Duration, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rc.Control(p.infoFn) != nil || p.errno != 0 {
		return 0, false
	}
	if p.info.Rtt != 0 {
		p.rttUs = p.info.Rtt
	}
	return infoPathIdle(&p.info), true
}

func infoPathIdle(info *unix.TCPInfo) time.Duration {
	return time.Duration(min(info.Last_data_recv, info.Last_ack_recv)) * time.Millisecond
}

// setKeepAliveIdle sets the socket's TCP_KEEPIDLE (whole seconds), which the
// check restores after each kick. A socket without keepalive is left alone:
// the user turned it off.
func (p *pathCheck) setKeepAliveIdle(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	secs := int32(max(1, d/time.Second))
	if p.keepOn == 0 || secs == p.keepIdle {
		return
	}
	p.keepIdle = secs
	p.errno = 0
	p.rc.Control(p.restoreFn)
}

// socketPathIdle is pathIdle for a socket that may be mid-check (a death found
// by the check itself): it allocates, and is used only when a conn dies.
func socketPathIdle(rc syscall.RawConn) (time.Duration, bool) {
	var info *unix.TCPInfo
	var err error
	if rc.Control(func(fd uintptr) { info, err = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }) != nil || err != nil {
		return 0, false
	}
	return infoPathIdle(info), true
}

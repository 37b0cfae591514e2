//go:build linux

package netns

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Route is one HAProxy frontend on the router.
type Route struct {
	// Backend is the host:port it forwards to (a server in Server).
	Backend string
	// NoLinger sets `option nolinger` on the frontend: an idle client
	// connection is closed with a FIN at once followed by a RST (HAProxy
	// shuts the socket down, then closes it with SO_LINGER 0), so the
	// client's next write fails locally (EPIPE) and nothing lingers. Without
	// it the FIN comes alone, and a RST only answers the client's next write.
	NoLinger bool
}

// firstFrontendPort is the port of the first frontend, on RouterClientIP;
// the others follow. The router namespace is private, so fixed ports are
// free.
const firstFrontendPort = 8001

// HAProxy runs HAProxy in the router, in TCP mode, with `timeout client` and
// `timeout server` set to idle: a connection idle that long is closed toward
// the client with a FIN, and for a NoLinger route a RST right after it. It returns the
// address of each route's frontend, in order, once all of them listen.
// HAProxy runs in the foreground (haproxy -db) and Close kills it by its pid.
// It needs haproxy.
func (n *Net) HAProxy(idle time.Duration, routes ...Route) ([]string, error) {
	if idle < time.Millisecond {
		return nil, fmt.Errorf("netns: haproxy idle timeout %v: want at least 1ms", idle)
	}
	var cfg strings.Builder
	ms := strconv.FormatInt(idle.Milliseconds(), 10) + "ms"
	fmt.Fprintf(&cfg, "defaults\n\tmode tcp\n\ttimeout connect 2s\n\ttimeout client %s\n\ttimeout server %s\n", ms, ms)
	addrs := make([]string, len(routes))
	for i, r := range routes {
		addrs[i] = net.JoinHostPort(RouterClientIP, strconv.Itoa(firstFrontendPort+i))
		fmt.Fprintf(&cfg, "\nfrontend f%d\n\tbind %s\n", i, addrs[i])
		if r.NoLinger {
			cfg.WriteString("\toption nolinger\n")
		}
		fmt.Fprintf(&cfg, "\tdefault_backend b%d\n\nbackend b%d\n\tserver s%d %s\n", i, i, i, r.Backend)
	}
	dir, err := os.MkdirTemp("", "grpcguard-haproxy-")
	if err != nil {
		return nil, err
	}
	n.removeOnClose(dir)
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg.String()), 0o600); err != nil {
		return nil, err
	}
	p, err := n.start(n.Router, "haproxy", "-db", "-f", path)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < len(routes); {
		if done, err := p.exited(); done {
			return nil, err
		}
		ok, err := n.Router.listening(firstFrontendPort + i)
		if err != nil {
			return nil, err
		}
		if ok {
			i++
			continue
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("netns: haproxy does not listen on %s after 10s", addrs[i])
		}
		time.Sleep(5 * time.Millisecond)
	}
	return addrs, nil
}

// listening reports whether a TCP socket listens on port in ns, from the
// namespace's /proc/net/tcp (the thread's own view: /proc/thread-self/net).
func (ns Namespace) listening(port int) (bool, error) {
	var found bool
	err := ns.Do(func() error {
		f, err := os.Open("/proc/thread-self/net/tcp")
		if err != nil {
			return err
		}
		defer f.Close()
		suffix := fmt.Sprintf(":%04X", port)
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st ...; st 0A is LISTEN.
			fields := strings.Fields(sc.Text())
			if len(fields) > 3 && strings.HasSuffix(fields[1], suffix) && fields[3] == "0A" {
				found = true
			}
		}
		return sc.Err()
	})
	return found, err
}
